"""`launch chaos --kueue-preempt`'s preemptor and its checks (launcher/chaos/kueue_plan.py), on recorded Workloads."""

from __future__ import annotations

import pytest

from launcher.chaos import kueue_plan as plan
from launcher.errors import SpecError
from tests.unit.test_kueue_admission import load


def wpc(name: str, value: int) -> dict:
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass", "metadata": {"name": name},
            "value": value}


def test_the_preemptor_asks_for_all_the_jobs_gpus():
    assert plan.accelerators(load("workload-admitted.json")) == ("nvidia.com/gpu", 16)  # master 8 + worker 8
    w = {"spec": {"podSets": [{"name": "node", "count": 4, "template": {"spec": {"containers": [
        {"name": "node", "resources": {"limits": {"nvidia.com/mig-1g.10gb": "2", "cpu": "4"}}}]}}}]}}
    assert plan.accelerators(w) == ("nvidia.com/mig-1g.10gb", 8)  # limits stand for requests
    assert plan.accelerators({"spec": {"podSets": [{"count": 2, "template": {"spec": {"containers": [
        {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}}]}}) is None


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
    w = plan.preemptor("train-a", "team-a", "team-a", "nvidia.com/gpu", 16, "high", 1000, "a1b2c3")
    assert w["apiVersion"] == "kueue.x-k8s.io/v1beta2" and w["kind"] == "Workload"
    assert "ownerReferences" not in w["metadata"] and w["metadata"]["name"] == "train-a-kueue-preempt-a1b2c3"
    spec = w["spec"]
    assert spec["queueName"] == "team-a" and spec["priority"] == 1000
    assert spec["priorityClassRef"] == {"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": "high"}
    (ps,) = spec["podSets"]
    assert ps["count"] == 1 and ps["template"]["spec"]["containers"][0]["resources"]["requests"] == {
        "nvidia.com/gpu": "16"}
    assert len(plan.preemptor("x" * 63, "ns", "q", "r", 1, "c", 1, "abcdef")["metadata"]["name"]) <= 63


def test_evicted_by_names_the_preemptor():
    w = load("workload-preempted.json")
    assert plan.evicted_by(w, "7d2e9b44-52c0-4f3e-8c61-0a9e1b7f4c22")
    assert not plan.evicted_by(w, "0f3a7c1e-1d1b-4a8e-9a55-3f0b6c2d9e10")  # an earlier preemptor's
    assert not plan.evicted_by(load("workload-readmitted.json"), "7d2e9b44-52c0-4f3e-8c61-0a9e1b7f4c22")
