"""`launch status | list` and `launch chaos --kueue-preempt` against a real Kueue (v0.17.0) and kwok pods.

Needs the Kueue tier (tests/cluster/kueue.py, fixture `kueue_cluster`). Jobs are queued by
labelling the rendered PyTorchJob with the LocalQueue, created with the launcher's own create_job
(tests/cluster/test_kueue_submit.py goes through `launch --queue`).
"""

from __future__ import annotations

import json

import pytest

from launcher.status import admission as kueue
from tests.cluster import kueue as kueue_tier
from tests.cluster.test_kueue_submit import api, ns  # noqa: F401 (fixtures: a namespace with the LocalQueue)
from tests.cluster.test_launcher_against_apiserver import launch
from tests.cluster.test_operator_runs_our_jobs import wait
from tests.helpers import EXAMPLE

pytestmark = pytest.mark.cluster


def queued(api, capsys, ns: str, name: str, gpus: int, priority: str | None = None, *flags: str) -> None:
    """A PyTorchJob (or, with flags, a TrainJob) of `gpus` GPUs (8 a node) in the tier's LocalQueue, at `priority`."""
    from launcher.k8s.jobs import create_job

    code, out, err = launch(capsys, EXAMPLE, "--gpus", str(gpus), "--gpus-per-node", "8", "--checkpoint", "s3://b/c",
                            "-n", ns, "--name", name, "--dry-run", "-o", "json", *flags)
    assert code == 0, err
    objects = json.loads(out)
    labels = objects[0]["metadata"].setdefault("labels", {})
    labels[kueue.QUEUE_LABEL] = kueue_tier.LOCAL_QUEUE
    if priority:
        labels[kueue.PRIORITY_CLASS_LABEL] = priority
    create_job(api, ns, objects)


def status(capsys, name: str, ns: str) -> dict:
    code, out, err = launch(capsys, "status", name, "-n", ns, "-o", "json")
    assert code == 0, err
    return json.loads(out)


def admission(capsys, name: str, ns: str) -> dict:
    return status(capsys, name, ns).get("admission") or {}


def test_a_job_waiting_for_quota_shows_the_queue_message(api, ns, capsys):
    queued(api, capsys, ns, "toobig", 1024)  # more GPUs than the ClusterQueue's quota: never admitted
    got = wait(lambda: (a := admission(capsys, "toobig", ns)).get("state") == "Queued" and "insufficient quota"
               in a.get("message", "") and a, 60, "the Workload's QuotaReserved=False message")
    assert kueue_tier.FLAVOR in got["message"] and got["clusterQueue"] == kueue_tier.CLUSTER_QUEUE
    code, out, _ = launch(capsys, "list", "-n", ns)
    assert code == 0 and f"Queued ({kueue_tier.CLUSTER_QUEUE}" in out, out
    code, out, _ = launch(capsys, "status", "toobig", "-n", ns)
    assert "kueue     Queued" in out and "insufficient quota" in out, out


def test_a_bare_high_priority_workload_preempts_and_status_shows_it(api, ns, capsys):
    from launcher.chaos import kueue_plan as plan
    from launcher.k8s import kueue as reads

    queued(api, capsys, ns, "victim", 8, priority="low")
    wait(lambda: admission(capsys, "victim", ns).get("state") == "Admitted", 90, "Kueue to admit the job",
         explain=lambda: json.dumps(admission(capsys, "victim", ns)))
    # Take every GPU of the ClusterQueue at priority "high": the victim has to go.
    body = plan.preemptor("victim", ns, kueue_tier.LOCAL_QUEUE, "nvidia.com/gpu", "8", "high",
                          int(next(c["value"] for c in reads.priority_classes(api)
                                   if c["metadata"]["name"] == "high")), "t1")
    reads.create_workload(api, ns, body)
    try:
        got = wait(lambda: (a := admission(capsys, "victim", ns)).get("state") in ("Preempted", "Requeued") and a,
                   90, "Kueue to preempt the job")
        (e,) = got["evictions"][-1:]
        assert e["reason"] == "Preempted" and e["preemption"] == "InClusterQueue", got
        got = wait(lambda: (a := admission(capsys, "victim", ns)).get("state") == "Requeued" and a, 90,
                   "the job's pods to stop and Kueue to requeue it")
        code, out, _ = launch(capsys, "list", "-n", ns)
        assert "Preempted → requeued" in out, out
    finally:
        reads.delete_workload(api, ns, body["metadata"]["name"])
    wait(lambda: admission(capsys, "victim", ns).get("state") == "Admitted", 120, "Kueue to re-admit the job")


def test_chaos_kueue_preempt_reports_eviction_and_readmission(api, ns, capsys):
    queued(api, capsys, ns, "chaosed", 8, priority="low")
    wait(lambda: admission(capsys, "chaosed", ns).get("state") == "Admitted", 90, "Kueue to admit the job")
    code, out, err = launch(capsys, "chaos", "chaosed", "-n", ns, "--kueue-preempt", "--wait", "180s")
    assert "evicted after" in out and "preempted by Kueue (InClusterQueue:" in out, out + err
    assert "re-admitted after" in out and "removed Workload chaosed-kueue-preempt-" in out, out + err
    assert code == 0, out + err
    from launcher.k8s import kueue as reads

    assert not [w for w in reads.workloads(api, ns) if w["metadata"]["name"].startswith("chaosed-kueue-preempt-")]


def test_chaos_kueue_preempt_on_a_trainjob_suspends_its_jobset_and_spends_no_restart(api, ns, capsys):
    """A TrainJob named "held" (kwok keeps its pods running): Kueue evicts it, JobSet deletes the pods, re-admits it."""
    queued(api, capsys, ns, "held", 8, "low", "--backend", "trainjob", "--gpus-per-node", "4")  # 2 nodes
    wait(lambda: admission(capsys, "held", ns).get("state") == "Admitted", 90, "Kueue to admit the TrainJob",
         explain=lambda: json.dumps(admission(capsys, "held", ns)))
    code, out, err = launch(capsys, "chaos", "held", "-n", ns, "--kueue-preempt", "--wait", "180s")
    assert code == 0 and "evicted after" in out and "re-admitted after" in out, out + err
    assert "running again after" in out, out + err  # the Jobs made new pods once the JobSet was unsuspended
    jobset = api.custom.get_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", ns, "jobsets", "held")
    assert (jobset.get("status") or {}).get("restarts", 0) == 0, jobset.get("status")  # Kueue's, not a failure
    doc = status(capsys, "held", ns)
    assert doc["retries_left"] == 3 and doc["admission"]["evictions"][-1]["preemption"] == "InClusterQueue", doc


def test_chaos_kueue_preempt_refuses_a_job_without_a_queue_label(api, ns, capsys):
    code, _, err = launch(capsys, EXAMPLE, "--gpus", "8", "--checkpoint", "s3://b/c", "-n", ns, "--name", "plain")
    assert code == 0, err
    code, out, err = launch(capsys, "chaos", "plain", "-n", ns, "--kueue-preempt")
    assert code == 2 and "not behind Kueue" in err and len(err.strip().splitlines()) == 1, out + err
