"""A Kueue preemption is a preemption: the real Kueue, the real operator and Trainer v2, the real runtime.

A job submitted with `launch --queue` waits suspended until Kueue admits it. A higher-priority
workload that needs its quota makes Kueue evict it (the Workload's Evicted condition, reason
Preempted): the job is suspended, its controller deletes its pods, every rank gets SIGTERM,
agrees on a stop step, commits it and exits 143. Kueue re-queues the job, admits it again when
the quota is free, and it resumes from that step. The preemptor is `launch chaos --kueue-preempt`'s:
a bare Workload (no job behind it) at a higher WorkloadPriorityClass.
"""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from tests.cluster import kueue as kueue_tier
from tests.cluster.pod_runner import RUN_FOR_REAL
from tests.cluster.test_launcher_against_apiserver import launch
from tests.cluster.test_operator_runs_the_runtime import cancel_real, latest_file, launch_real, real_namespace
from tests.cluster.test_operator_runs_our_jobs import api, wait  # noqa: F401 (api: the fixture)
from tests.helpers import EXAMPLE, run
from trainer import contract

pytestmark = pytest.mark.cluster

RESUMED = re.compile(re.escape(contract.LOG_RESUMED).replace(r"\{step\}", r"(\d+)"))
QUEUE_ARGS = ("--queue", kueue_tier.LOCAL_QUEUE, "--priority", "low")


def local_digest(tmp_path, steps: int, *script_args: str) -> str:
    """The final weights of an uninterrupted `--local` run on 2 ranks (as the job's 2 pods x 1 rank)."""
    out = run(["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ref"), "--run-id", "ref", EXAMPLE, "--",
               *script_args, "--steps", str(steps), "--result", str(tmp_path / "result.json")], timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads((tmp_path / "result.json").read_text())["sha256"][:16]


def timings(out: str) -> dict[str, float]:
    """The seconds `launch chaos --kueue-preempt` reports for each stage, from its own output."""
    return {key: float(m.group(1)) for key, pattern in (
        ("evicted", r"evicted after ([0-9.]+)s"), ("readmitted", r"re-admitted after ([0-9.]+)s"),
        ("running", r"running again after ([0-9.]+)s")) if (m := re.search(pattern, out))}


def test_a_kueue_preemption_commits_exits_143_requeues_and_resumes_to_a_local_runs_weights(
        api, capsys, pod_runner, kueue, kueue_cluster, tmp_path):
    ns = real_namespace(api)
    kueue.local_queue(ns)
    script = ("--hidden", "16", "--samples", "2048")
    steps = 80
    t0 = time.monotonic()
    launch_real(capsys, ns, *script, "--steps", str(steps), "--step-sleep", "0.1", launch_args=QUEUE_ARGS)
    try:
        job = api.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", RUN_FOR_REAL)
        assert job["metadata"]["labels"][kueue_tier.QUEUE_LABEL] == kueue_tier.LOCAL_QUEUE
        uid = job["metadata"]["uid"]

        def admitted():
            c = kueue_tier.condition(kueue_tier.workload_of(api.custom, ns, uid), "Admitted")
            return c if c and c["status"] == "True" else None

        wait(admitted, 120, "Kueue to admit the job")
        t_admitted = time.monotonic() - t0
        latest = latest_file(pod_runner, ns)
        wait(lambda: latest.exists(), 240, f"a committed checkpoint at {latest}")

        # A higher-priority Workload asks for the ClusterQueue's CPUs (the job's and the free ones): Kueue can
        # admit it only by evicting the job. Chaos waits for the eviction, removes the preemptor, and follows
        # the job back: re-admitted, new pods running, the step they resumed from.
        code, out, err = launch(capsys, "chaos", RUN_FOR_REAL, "-n", ns, "--kueue-preempt", "--wait", "300s")
        assert code == 0, out + err
        assert "evicted after" in out and "re-admitted after" in out, out
        # Every rank agreed on a stop step, committed it and exited 143, the code the operator retries.
        first_exits = sorted(code for name, code in pod_runner.exits[:2])
        assert first_exits == [contract.ExitCode.PREEMPTED] * 2, pod_runner.exits
        resumed = int(re.search(r"resumed from step (\d+)", out).group(1))
        assert resumed >= 5, out
        ev = kueue_tier.condition(kueue_tier.workload_of(api.custom, ns, uid), "Evicted")
        # False again once re-admitted; Kueue keeps what it was in the message.
        assert ev and ev["status"] == "False" and ev["message"].startswith("Previously: Preempted"), ev

        def succeeded():
            job = api.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", RUN_FOR_REAL)
            return any(c["type"] == "Succeeded" and c["status"] == "True"
                       for c in job.get("status", {}).get("conditions", []))

        wait(succeeded, 300, "the job to succeed after the re-admission")
        master_log = (pod_runner.log_dir / f"{RUN_FOR_REAL}-master-0.log").read_text()
        assert [int(s) for s in RESUMED.findall(master_log)] == [resumed], master_log[-3000:]
        final = re.findall(r"weights sha256 ([0-9a-f]{16})", master_log)
        assert final and final[-1] == local_digest(tmp_path, steps, *script), master_log[-3000:]

        code, out_status, _ = launch(capsys, "status", RUN_FOR_REAL, "-n", ns, "-o", "json")
        status = json.loads(out_status)
        # A preemption spends no retry: the restart budget is whole.
        assert status["state"] == "Succeeded" and status.get("retries_left") == 3, status
        # The eviction, read from the Workload (the ledger is on the job's volume, which launch cannot read here).
        (e,) = status["admission"]["evictions"]
        assert (e["reason"], e["preemption"]) == ("Preempted", "InClusterQueue"), status["admission"]
        t = timings(out)
        # Past capsys (launch's output is captured there): the figures BENCHMARKS.md quotes, seen with -s.
        print(f"kueue (cluster tier, load {open('/proc/loadavg').read().split()[0]}): submit -> admitted "
              f"{t_admitted:.1f}s; preemptor created -> job evicted {t['evicted']:.1f}s -> re-admitted "
              f"{t['readmitted']:.1f}s -> new pods running {t['running']:.1f}s", file=sys.__stderr__)
    finally:
        cancel_real(api, capsys, ns)
