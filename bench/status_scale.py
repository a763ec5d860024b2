"""`launch status` and `launch list` at 128 and 512 pods, against the cluster tier's control plane.

    KUBETRAIN_CLUSTER_BIN=... python bench/status_scale.py [--pods 128,512] [--trials 3]

Starts the cluster tier (tests/cluster/conftest.py: etcd, kube-apiserver, controller-manager,
scheduler, kwok, the training operator), adds kwok nodes of 8 GPUs for each size, submits a
job of that many one-GPU pods named "held" (kwok keeps them Running), waits until all run,
and times `launch status JOB`, `launch status JOB -o json` and `launch list` as the user
runs them: a fresh `python -m launcher.cli` process each, median of --trials. Prints a table
and writes bench/results/status-<time>.json. It measures; it asserts nothing about times.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SIZES = [int(s) for s in os.environ.get("KUBETRAIN_BENCH_PODS", "128,512").split(",")]
TRIALS = int(os.environ.get("KUBETRAIN_BENCH_TRIALS", "3"))


def _time(argv: list[str], kubeconfig: str) -> tuple[float, str]:
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "launcher.cli", *argv], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "KUBECONFIG": kubeconfig}, timeout=600)
    took = time.monotonic() - started
    if r.returncode != 0:
        raise RuntimeError(f"launch {' '.join(argv)} exited {r.returncode}: {r.stderr}")
    return took, r.stdout


def bench_status_at_scale(operator_cluster, capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", operator_cluster)
    from launcher.k8s import api as client
    from tests.cluster.scale import SCALE_GPU_PRODUCT, scale_nodes, wait_running
    from tests.cluster.test_launcher_against_apiserver import launch, namespace
    from tests.helpers import EXAMPLE

    api = client.connect()
    for pods in SIZES:
        ns = namespace(api)
        with scale_nodes(api.core, (pods + 7) // 8):
            code, _, err = launch(capsys, EXAMPLE, "--gpus", str(pods), "--gpus-per-node", "1", "--gpu-type",
                                  SCALE_GPU_PRODUCT, "--checkpoint", "s3://b/c", "-n", ns, "--name", "held")
            if code:
                raise RuntimeError(err)
            wait_running(api.core, ns, "held", pods, timeout=900)
            row: dict = {"pods": pods}
            for key, argv in (("status", ["status", "held", "-n", ns]),
                              ("status_json", ["status", "held", "-n", ns, "-o", "json"]),
                              ("list", ["list", "-n", ns])):
                times, out = [], ""
                for _ in range(TRIALS):
                    took, out = _time(argv, operator_cluster)
                    times.append(took)
                row[key + "_s"] = round(statistics.median(times), 2)
                row[key + "_all_s"] = [round(t, 2) for t in times]
                if key == "status":
                    row["status_lines"] = len(out.splitlines())
                    row["status_head"] = out.splitlines()[:3]
            baseline, _ = _time(["--help"], operator_cluster)
            row["launch_help_s"] = round(baseline, 2)
            with open(os.environ["KUBETRAIN_BENCH_OUT"], "a") as f:  # pytest imports this file anew: no shared list
                f.write(json.dumps(row) + "\n")
            with capsys.disabled():
                print(json.dumps(row), flush=True)
            launch(capsys, "cancel", "held", "-n", ns)
            deadline = time.monotonic() + 300
            while api.core.list_namespaced_pod(ns).items and time.monotonic() < deadline:
                time.sleep(2)


def main() -> int:
    import pytest

    os.makedirs(os.path.join(REPO, "bench", "results"), exist_ok=True)
    path = os.path.join(REPO, "bench", "results", time.strftime("status-%Y%m%d-%H%M%S.json"))
    rows_path = path + ".rows"
    os.environ["KUBETRAIN_BENCH_OUT"] = rows_path
    code = pytest.main([os.path.abspath(__file__), "-p", "tests.cluster.conftest", "-o", "python_functions=bench_*",
                        "-q", "-W", "ignore", "-p", "no:cacheprovider"])
    if os.path.exists(rows_path):
        with open(rows_path) as f:
            results = [json.loads(line) for line in f if line.strip()]
        os.remove(rows_path)
        with open(path, "w") as f:
            json.dump({"trials": TRIALS, "results": results}, f, indent=2)
        print(f"{'pods':>5} {'status':>8} {'-o json':>8} {'list':>6} {'--help':>7} lines")
        for r in results:
            print(f"{r['pods']:>5} {r['status_s']:>7}s {r['status_json_s']:>7}s {r['list_s']:>5}s "
                  f"{r['launch_help_s']:>6}s {r['status_lines']}")
        print(f"wrote {path}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
