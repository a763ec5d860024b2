"""`launch chaos --kueue-preempt`'s preemptor and its checks (launcher/chaos/kueue_plan.py), on recorded Workloads."""

from __future__ import annotations

import pytest

from launcher.chaos import kueue_plan as plan
from launcher.errors import SpecError
from tests.unit.test_kueue_admission import load


def wpc(name: str, value: int) -> dict:
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass", "metadata": {"name": name},
            "value": value}


def cq(nominal: dict[str, str], reserved: dict[str, str], flavor: str = "fake-gpu") -> dict:
    return {"spec": {"resourceGroups": [{"flavors": [{"name": flavor, "resources": [
                {"name": r, "nominalQuota": q} for r, q in nominal.items()]}]}]},
            "status": {"flavorsReservation": [{"name": flavor, "resources": [
                {"name": r, "total": q} for r, q in reserved.items()]}]}}


def test_the_preemptor_asks_for_the_jobs_gpus_and_all_that_is_free():
    job = load("workload-admitted.json")  # master 8 + worker 8 GPUs of fake-gpu
    # Nothing else free: the job's 16 are what it takes.
    assert plan.take(job, cq({"nvidia.com/gpu": "16"}, {"nvidia.com/gpu": "16"})) == ("nvidia.com/gpu", "16")
    # 8 more free: asking for the job's 16 alone would be admitted beside it; it asks for all 24.
    assert plan.take(job, cq({"nvidia.com/gpu": "24"}, {"nvidia.com/gpu": "16"})) == ("nvidia.com/gpu", "24")
    # Never above the nominal quota (here the job borrowed 4): beyond it Kueue would borrow, not preempt.
    assert plan.take(job, cq({"nvidia.com/gpu": "12"}, {"nvidia.com/gpu": "16"})) == ("nvidia.com/gpu", "12")


def test_a_cpu_only_job_is_preempted_for_its_cpus():
    job = {"status": {"admission": {"podSetAssignments": [
        {"name": "master", "flavors": {"cpu": "fake-gpu"}, "resourceUsage": {"cpu": "500m", "memory": "1Gi"}},
        {"name": "worker", "flavors": {"cpu": "fake-gpu"}, "resourceUsage": {"cpu": "500m"}}]}}}
    assert plan.take(job, cq({"cpu": "16"}, {"cpu": "1"})) == ("cpu", "16")
    assert plan.take(job, cq({"cpu": "16"}, {"cpu": "15500m"})) == ("cpu", "1500m")
    assert plan.take({"status": {"admission": {"podSetAssignments": [
        {"flavors": {"memory": "f"}, "resourceUsage": {"memory": "1Gi"}}]}}}, cq({}, {})) is None


def test_the_lowest_priority_class_above_the_job_is_picked():
    classes = [wpc("low", 100), wpc("urgent", 10000), wpc("high", 1000), wpc("same", 100)]
    assert plan.higher_class(classes, 100) == ("high", 1000)
    assert plan.higher_class(classes, 0) == ("low", 100)  # a tie: by name, so the pick is stable
    assert plan.higher_class(classes, 10000) is None and plan.higher_class([], 0) is None


@pytest.mark.parametrize("policy", [None, "Never", "Any"])
def test_a_cluster_queue_that_does_not_preempt_within_itself_is_refused(policy):
    cq = {"spec": {"preemption": {"withinClusterQueue": policy}} if policy else {}}
    with pytest.raises(SpecError, match="does not preempt within itself"):
        plan.check_policy(cq, "gpu-team-a")


@pytest.mark.parametrize("policy", plan.PREEMPTING_POLICIES)
def test_lower_priority_policies_preempt(policy):
    plan.check_policy({"spec": {"preemption": {"withinClusterQueue": policy}}}, "gpu-team-a")


def test_the_preemptor_is_a_bare_v1beta2_workload_in_the_jobs_queue():
    w = plan.preemptor("train-a", "team-a", "team-a", "nvidia.com/gpu", "16", "high", 1000, "a1b2c3")
    assert w["apiVersion"] == "kueue.x-k8s.io/v1beta2" and w["kind"] == "Workload"
    assert "ownerReferences" not in w["metadata"] and w["metadata"]["name"] == "train-a-kueue-preempt-a1b2c3"
    spec = w["spec"]
    assert spec["queueName"] == "team-a" and spec["priority"] == 1000
    assert spec["priorityClassRef"] == {"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": "high"}
    (ps,) = spec["podSets"]
    assert ps["count"] == 1 and ps["template"]["spec"]["containers"][0]["resources"]["requests"] == {
        "nvidia.com/gpu": "16"}
    assert len(plan.preemptor("x" * 63, "ns", "q", "r", "1", "c", 1, "abcdef")["metadata"]["name"]) <= 63


def test_evicted_by_names_the_preemptor():
    w = load("workload-preempted.json")
    assert plan.evicted_by(w, "7d2e9b44-52c0-4f3e-8c61-0a9e1b7f4c22")
    assert not plan.evicted_by(w, "0f3a7c1e-1d1b-4a8e-9a55-3f0b6c2d9e10")  # an earlier preemptor's
    assert not plan.evicted_by(load("workload-readmitted.json"), "7d2e9b44-52c0-4f3e-8c61-0a9e1b7f4c22")
