"""A Kueue preemption is a preemption: the real Kueue, the real operator and Trainer v2, the real runtime.

A job submitted with `launch --queue` waits suspended until Kueue admits it. A higher-priority
workload that needs its quota makes Kueue evict it (the Workload's Evicted condition, reason
Preempted): the job is suspended, its controller deletes its pods, every rank gets SIGTERM,
agrees on a stop step, commits it and exits 143. Kueue re-queues the job, admits it again when
the quota is free, and it resumes from that step. The preemptor here is a bare Workload (no
job behind it), as `launch chaos --kueue-preempt` submits one.
"""

from __future__ import annotations

import json
import re
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


def preemptor(ns: str, name: str, cpu: int) -> dict:
    """A bare high-priority Workload in the same LocalQueue asking for `cpu` (the CPU jobs' quota)."""
    return {"apiVersion": kueue_tier.API_VERSION, "kind": "Workload", "metadata": {"name": name, "namespace": ns},
            "spec": {"queueName": kueue_tier.LOCAL_QUEUE, "priorityClassName": "high",
                     "priorityClassSource": "kueue.x-k8s.io/workloadpriorityclass",
                     "podSets": [{"name": "main", "count": 1, "template": {"spec": {
                         "restartPolicy": "Never",
                         "containers": [{"name": "c", "image": "none",
                                         "resources": {"requests": {"cpu": str(cpu)}}}]}}}]}}


def job_uid(api, ns: str, plural: str, group: str = "kubeflow.org", version: str = "v1") -> str:
    return api.custom.get_namespaced_custom_object(group, version, ns, plural, RUN_FOR_REAL)["metadata"]["uid"]


def local_digest(tmp_path, steps: int, *script_args: str) -> str:
    """The final weights of an uninterrupted `--local` run on 2 ranks (as the job's 2 pods x 1 rank)."""
    out = run(["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ref"), "--run-id", "ref", EXAMPLE, "--",
               *script_args, "--steps", str(steps), "--result", str(tmp_path / "result.json")], timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads((tmp_path / "result.json").read_text())["sha256"][:16]


def test_a_kueue_preemption_commits_exits_143_requeues_and_resumes_to_a_local_runs_weights(
        api, capsys, pod_runner, kueue, kueue_cluster, tmp_path):
    ns = real_namespace(api)
    kueue.local_queue(ns)
    script = ("--hidden", "16", "--samples", "2048")
    steps = 80
    t0 = time.monotonic()
    launch_real(capsys, ns, *script, "--steps", str(steps), "--step-sleep", "0.1", launch_args=QUEUE_ARGS)
    bare = "preemptor"
    try:
        uid = job_uid(api, ns, "pytorchjobs")
        job = api.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", RUN_FOR_REAL)
        assert job["metadata"]["labels"][kueue_tier.QUEUE_LABEL] == kueue_tier.LOCAL_QUEUE

        def admitted():
            c = kueue_tier.condition(kueue_tier.workload_of(api.custom, ns, uid), "Admitted")
            return c if c and c["status"] == "True" else None

        wait(admitted, 120, "Kueue to admit the job")
        t_admitted = time.monotonic() - t0
        latest = latest_file(pod_runner, ns)
        wait(lambda: latest.exists(), 240, f"a committed checkpoint at {latest}")

        # Every CPU of the ClusterQueue, at a higher priority: Kueue can admit it only by evicting our job.
        t1 = time.monotonic()
        kueue.create("workloads", preemptor(ns, bare, kueue_tier.CPU_NOMINAL), ns)

        def evicted():
            c = kueue_tier.condition(kueue_tier.workload_of(api.custom, ns, uid), "Evicted")
            return c if c and c["status"] == "True" else None

        ev = wait(evicted, 120, "Kueue to evict the job")
        assert ev["reason"] == "Preempted", ev
        exits = wait(lambda: sorted(code for name, code in pod_runner.exits) if len(pod_runner.exits) >= 2 else None,
                     120, "both pods to stop")
        t_exited = time.monotonic() - t1
        # Every rank agreed on a stop step, committed it and exited 143, the code the operator retries.
        assert exits == [contract.ExitCode.PREEMPTED] * 2, pod_runner.exits
        stop_step = int(latest.read_text().strip().rsplit("-", 1)[-1])
        job = api.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", RUN_FOR_REAL)
        assert job["spec"]["runPolicy"]["suspend"] is True  # suspended by Kueue, not failed
        preempted = kueue_tier.condition(kueue_tier.workload_of(api.custom, ns, uid), "Preempted")
        assert preempted and preempted["reason"] == "InClusterQueue", preempted

        api.custom.delete_namespaced_custom_object(kueue_tier.GROUP, kueue_tier.VERSION, ns, "workloads", bare)
        t2 = time.monotonic()
        wait(admitted, 120, "Kueue to admit the job again")
        t_readmitted = time.monotonic() - t2
        master_log_path = pod_runner.log_dir / f"{RUN_FOR_REAL}-master-0.log"
        wait(lambda: RESUMED.search(master_log_path.read_text()), 240,
             "the recreated master to resume")
        t_resumed = time.monotonic() - t2

        def succeeded():
            job = api.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", RUN_FOR_REAL)
            return any(c["type"] == "Succeeded" and c["status"] == "True"
                       for c in job.get("status", {}).get("conditions", []))

        wait(succeeded, 300, "the job to succeed after the re-admission")
        master_log = master_log_path.read_text()
        resumed = [int(s) for s in RESUMED.findall(master_log)]
        assert resumed and resumed[-1] == stop_step, (stop_step, resumed)
        final = re.findall(r"weights sha256 ([0-9a-f]{16})", master_log)
        assert final and final[-1] == local_digest(tmp_path, steps, *script), master_log[-3000:]

        code, out, err = launch(capsys, "status", RUN_FOR_REAL, "-n", ns, "-o", "json")
        status = json.loads(out)
        # A preemption spends no retry: the runtime's restart budget is whole.
        assert status["state"] == "Succeeded" and status.get("retries_left") == 3, status
        print(f"kueue (cluster tier, load {open('/proc/loadavg').read().split()[0]}): submit -> admitted "
              f"{t_admitted:.1f}s; preemptor created -> both ranks exited 143 {t_exited:.1f}s; "
              f"preemptor deleted -> re-admitted {t_readmitted:.1f}s, -> resumed (restored, next step running) "
              f"{t_resumed:.1f}s")
    finally:
        try:
            api.custom.delete_namespaced_custom_object(kueue_tier.GROUP, kueue_tier.VERSION, ns, "workloads", bare)
        except Exception:
            pass
        cancel_real(api, capsys, ns)
