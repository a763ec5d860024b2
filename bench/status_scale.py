"""`launch status` and `launch list` at 128, 512, 2,048 and 4,096 pods, against the cluster tier's control plane.

    KUBETRAIN_CLUSTER_BIN=... python -m bench status-scale
    (KUBETRAIN_BENCH_PODS=128,512,2048,4096 and KUBETRAIN_BENCH_TRIALS=3 by default)

Starts the cluster tier (tests/cluster/conftest.py: etcd, kube-apiserver, controller-manager,
scheduler, kwok, the training operator), adds kwok nodes of 8 GPUs for each size, submits a
job of that many one-GPU pods named "held" (kwok keeps them Running), waits until all run,
and times `launch status JOB`, `launch status JOB -o json` and `launch list` as the user
runs them: a fresh `python -m launcher.cli` process each, median of the trials, and
`launch --help` beside them; with KUBETRAIN_BENCH_BASELINE=<an older checkout> its `status`
too, against the same pods. Each trial runs every command once, so a baseline and ours see
the same swings of a shared machine's load; each size records the load average before and
after its trials. It measures; it asserts nothing about times.

The control plane is the cluster tier's pytest fixture, so `run` starts pytest on this file
in a child process, which collects `bench_status_at_scale`: the bench itself imports nothing
from tests/.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from bench.context import REPO, Context

#: A checkout of an earlier launcher (a `git worktree` of main, say): its `status` is timed beside ours, same cluster.
BASELINE = os.environ.get("KUBETRAIN_BENCH_BASELINE")
SIZES = [int(s) for s in os.environ.get("KUBETRAIN_BENCH_PODS", "128,512,2048,4096").split(",")]
TRIALS = int(os.environ.get("KUBETRAIN_BENCH_TRIALS", "3"))


def _time(argv: list[str], kubeconfig: str, cwd: str = REPO) -> tuple[float, str]:
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "launcher.cli", *argv], cwd=cwd, capture_output=True, text=True,
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
            runs = [("status", ["status", "held", "-n", ns], REPO),
                    ("status_json", ["status", "held", "-n", ns, "-o", "json"], REPO),
                    ("list", ["list", "-n", ns], REPO)]
            if BASELINE:
                runs += [("baseline_status", ["status", "held", "-n", ns], BASELINE),
                         ("baseline_status_json", ["status", "held", "-n", ns, "-o", "json"], BASELINE)]
            row["load_before"] = [round(x, 2) for x in os.getloadavg()]
            times: dict[str, list[float]] = {key: [] for key, _, _ in runs}
            for _ in range(TRIALS):  # interleaved: each trial runs every command once
                for key, argv, cwd in runs:
                    took, out = _time(argv, operator_cluster, cwd)
                    times[key].append(took)
                    if key in ("status", "baseline_status"):
                        row[key + "_lines"] = len(out.splitlines())
                        row[key + "_head"] = out.splitlines()[:3]
            for key, _, _ in runs:
                row[key + "_s"] = round(statistics.median(times[key]), 2)
                row[key + "_all_s"] = [round(t, 2) for t in times[key]]
            row["load_after"] = [round(x, 2) for x in os.getloadavg()]
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


def run(ctx: Context) -> dict:
    rows_path = os.path.join(ctx.tmp, "status-rows.jsonl")
    env = {**os.environ, "KUBETRAIN_BENCH_OUT": rows_path}
    r = subprocess.run([sys.executable, "-m", "pytest", os.path.abspath(__file__), "-p", "tests.cluster.conftest",
                        "-o", "python_functions=bench_*", "-q", "-W", "ignore", "-p", "no:cacheprovider",
                        # the tier's 600 s per test is too short here: 4,096 pods take minutes to start
                        "-o", "timeout=3600"],
                       cwd=REPO, env=env)
    rows = []
    if os.path.exists(rows_path):
        with open(rows_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    if r.returncode != 0:
        raise RuntimeError(f"the status-at-scale run failed (pytest exit {r.returncode}) after {len(rows)} size(s)")
    return {"trials": TRIALS, "results": rows}
