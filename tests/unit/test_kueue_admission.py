"""A job's place in Kueue (launcher/status/admission.py) on Workloads written from Kueue v0.17.0's v1beta2 types.

The fixtures (tests/fixtures/kueue/) follow one PyTorchJob through pending for quota, admitted,
preempted (its pods being stopped), requeued and re-admitted, with the events Kueue records on
its Workload (two preemptions, 15 minutes apart).
"""

from __future__ import annotations

import datetime
import json
import os

from launcher.status import admission as kueue
from tests.helpers import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures", "kueue")
NOW = datetime.datetime(2026, 3, 1, 10, 30, tzinfo=datetime.timezone.utc)
JOB = {"metadata": {"name": "train-a", "uid": "job-uid-1", "labels": {kueue.QUEUE_LABEL: "team-a"}}}


def load(name: str):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


def events() -> list[dict]:
    return [kueue.event_record(e) for e in load("workload-events.json")["items"]]


def test_a_job_without_a_queue_label_is_not_kueues():
    assert kueue.queue_name({"metadata": {"name": "x", "labels": {"app": "y"}}}) is None
    assert kueue.queue_name(JOB) == "team-a"
    assert kueue.short_state(None) == "-" and kueue.doc(None) is None


def test_a_workload_waiting_for_quota_says_why_and_where():
    a = kueue.summarize(JOB, load("workload-pending.json"))
    assert a.state == "Queued" and a.workload == "pytorchjob-train-a-3c1f9" and a.cluster_queue is None
    assert a.message.startswith("couldn't assign flavors to pod set master: insufficient quota for nvidia.com/gpu")
    assert kueue.short_state(a) == "Queued (team-a)"  # no ClusterQueue known: the LocalQueue
    a = kueue.Admission(**{**a.__dict__, "cluster_queue": "gpu-team-a", "position": 3})
    assert kueue.short_state(a) == "Queued (gpu-team-a, #3)"
    head = kueue.lines(a, NOW)[0]
    assert head.startswith("kueue     Queued 29m ago (LocalQueue team-a, ClusterQueue gpu-team-a, position 3 "
                           "in its LocalQueue): couldn't assign flavors")
    assert kueue.waiting_line(a).startswith("queued in Kueue's LocalQueue team-a (position 3), waiting for "
                                            "admission: couldn't assign flavors")


def test_no_workload_yet_is_waiting_for_kueue():
    a = kueue.summarize(JOB, None)
    assert a.state == "Waiting" and "has not created a Workload" in a.message
    assert kueue.short_state(a) == "Waiting (team-a)" and kueue.waiting_line(a) is not None


def test_an_admitted_workload_names_its_cluster_queue_flavors_and_when():
    a = kueue.summarize(JOB, load("workload-admitted.json"))
    assert a.state == "Admitted" and a.cluster_queue == "gpu-team-a" and a.priority == 100
    assert dict(a.flavors) == {"cpu": "default", "nvidia.com/gpu": "fake-gpu"}
    assert a.since == datetime.datetime(2026, 3, 1, 10, 0, 5, tzinfo=datetime.timezone.utc)
    assert kueue.short_state(a) == "Admitted" and kueue.waiting_line(a) is None and a.evictions == ()
    assert kueue.lines(a, NOW) == ["kueue     Admitted 29m ago (LocalQueue team-a, ClusterQueue gpu-team-a; "
                                   "flavors cpu: default, nvidia.com/gpu: fake-gpu)"]
    d = kueue.doc(a)
    assert d["state"] == "Admitted" and d["clusterQueue"] == "gpu-team-a" and d["since"] == "2026-03-01T10:00:05Z"
    json.dumps(d)  # -o json can print it


def test_a_preempted_workload_says_by_what_while_its_pods_stop():
    a = kueue.summarize(JOB, load("workload-preempted.json"))
    assert a.state == "Preempted" and kueue.short_state(a) == "Preempted"
    (e,) = a.evictions  # the conditions keep the latest eviction only
    assert e.reason == "Preempted" and e.preemption == "InClusterQueue" and e.source == "condition"
    assert e.at == datetime.datetime(2026, 3, 1, 10, 20, tzinfo=datetime.timezone.utc)
    assert e.cause.startswith("preempted by Kueue (InClusterQueue: Preempted to accommodate a workload (UID: 7d2e")
    assert kueue.waiting_line(a).startswith("preempted by Kueue, its pods are being stopped")


def test_a_requeued_workload_is_preempted_then_requeued():
    a = kueue.summarize(JOB, load("workload-requeued.json"))
    assert a.state == "Requeued" and kueue.short_state(a) == "Preempted → requeued"
    assert a.message.startswith("Preempted to accommodate")  # QuotaReserved=False carries the eviction's message
    assert kueue.waiting_line(a).startswith("preempted and requeued in Kueue's LocalQueue team-a")
    assert kueue.lines(a, NOW)[0].startswith("kueue     Preempted → requeued 9m ago (LocalQueue team-a)")


def test_a_readmitted_workload_keeps_its_latest_eviction_without_a_time():
    a = kueue.summarize(JOB, load("workload-readmitted.json"))
    assert a.state == "Admitted"
    (e,) = a.evictions
    # Re-admission resets Evicted to False ("Previously: ..."): when is lost, only that it came before then.
    assert e.at is None and e.before == datetime.datetime(2026, 3, 1, 10, 25, tzinfo=datetime.timezone.utc)
    assert e.reason == "Preempted" and e.preemption == "InClusterQueue" and not e.message.startswith("Previously")
    assert kueue.lines(a, NOW)[1].startswith("  evicted before 2026-03-01T10:25:00Z: preempted by Kueue (InClusterQueue:")


def test_events_recover_earlier_evictions_with_their_times():
    a = kueue.summarize(JOB, load("workload-readmitted.json"), events())
    assert [(e.at.strftime("%H:%M"), e.source, e.preemption) for e in a.evictions] == [
        ("10:05", "event", "InClusterQueue"), ("10:20", "event", "InClusterQueue")]  # the condition's is the 10:20 one
    lines = kueue.lines(a, NOW)
    assert len(lines) == 3 and lines[1].startswith("  evicted 2026-03-01T10:05:00Z: preempted by Kueue")
    assert [e["at"] for e in kueue.doc(a)["evictions"]] == ["2026-03-01T10:05:00Z", "2026-03-01T10:20:00Z"]


def test_a_merged_event_stands_for_its_first_and_last_eviction():
    e = {"reason": "EvictedDueToPreempted", "message": "Preempted to accommodate a workload (UID: u, JobUID: j) due to "
         "reclamation within the cohort while borrowing; preemptor path: /a; preemptee path: /b",
         "firstTimestamp": "2026-03-01T10:00:00Z", "lastTimestamp": "2026-03-01T10:10:00Z", "count": 2}
    got = kueue.evictions({}, [kueue.event_record(e)])
    assert [x.at.minute for x in got] == [0, 10] and {x.preemption for x in got} == {"InCohortReclaimWhileBorrowing"}


def test_other_evictions_name_their_reason():
    w = {"status": {"conditions": [
        {"type": "Evicted", "status": "True", "reason": "PodsReadyTimeout", "message": "Exceeded the PodsReady timeout",
         "lastTransitionTime": "2026-03-01T10:00:00Z"},
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "Exceeded the PodsReady timeout"},
        {"type": "Requeued", "status": "False", "reason": "PodsReadyTimeout", "message": "x"}]}}
    a = kueue.summarize(JOB, w)
    assert a.state == "Evicted" and kueue.short_state(a) == "Evicted (PodsReadyTimeout)"
    assert a.evictions[0].cause == "evicted by Kueue (PodsReadyTimeout: Exceeded the PodsReady timeout)"


def test_launch_list_has_an_admission_column_only_when_a_job_is_behind_kueue():
    from launcher.status import format as status_fmt

    plain = [{"name": "b", "state": "Running", "pods": 1, "created": None}]
    assert status_fmt.job_rows(plain, NOW)[0] == ["NAME", "STATE", "PODS", "AGE"]
    queued = {"name": "a", "state": "Created", "pods": 2, "created": None,
              "admission": kueue.doc(kueue.summarize(JOB, load("workload-requeued.json")))}
    header, rows = status_fmt.job_rows([queued, *plain], NOW)
    assert header == ["NAME", "STATE", "ADMISSION", "PODS", "AGE"]
    assert rows == [["a", "Created", "Preempted → requeued", "2", "<unknown>"], ["b", "Running", "-", "1", "<unknown>"]]
