"""launcher/k8s/kueue.py's reads against a fake API: which calls it makes, and that failures are answers."""

from __future__ import annotations

import json
import types

import pytest

from launcher.status import admission as kueue
from tests.unit.test_kueue_admission import JOB, load

pytest.importorskip("kubernetes")

from kubernetes.client.exceptions import ApiException  # noqa: E402

from launcher.k8s import kueue as reads  # noqa: E402


def read_admission(api, ns, job):
    """The job's Admission as `launch status` makes it: the raw reads, then the pure summary."""
    got = reads.read_kueue(api, ns, job)
    return kueue.of_reads(job, got) if got is not None else None


class Resp:
    def __init__(self, doc: object) -> None:
        self.data = json.dumps(doc).encode()

    def release_conn(self) -> None:
        pass


class FakeApi:
    """Serves the given Workloads (by job-uid label), the recorded events, one LocalQueue; no visibility API."""

    def __init__(self, workloads: list[dict], *, visibility: dict | None = None, forbidden: bool = False) -> None:
        self.calls: list[str] = []
        self.custom = types.SimpleNamespace(list_namespaced_custom_object=self._list,
                                            get_namespaced_custom_object=self._get,
                                            api_client=types.SimpleNamespace(call_api=self._visibility))
        self.core = types.SimpleNamespace(list_namespaced_event=self._events)
        self.workloads, self.visibility, self.forbidden = workloads, visibility, forbidden

    def _list(self, group, version, ns, plural, label_selector="", _preload_content=True):
        self.calls.append(f"list {plural} {label_selector}".strip())
        if self.forbidden:
            raise ApiException(status=403, reason="Forbidden")
        key, _, value = label_selector.partition("=")
        return Resp({"items": [w for w in self.workloads
                               if not label_selector or w["metadata"]["labels"].get(key) == value]})

    def _get(self, group, version, ns, plural, name):
        self.calls.append(f"get {plural} {name}")
        return {"spec": {"clusterQueue": "gpu-team-a"}}

    def _events(self, ns, field_selector, _preload_content=True):
        self.calls.append("list events")
        return Resp(load("workload-events.json"))

    def _visibility(self, path, method, path_params, *args, **kwargs):
        self.calls.append("visibility")
        if self.visibility is None:
            raise ApiException(status=404, reason="Not Found")
        return Resp(self.visibility)


def test_a_job_without_a_queue_label_costs_no_call():
    api = FakeApi([load("workload-admitted.json")])
    assert read_admission(api, "team-a", {"metadata": {"name": "x", "uid": "u", "labels": {}}}) is None
    assert reads.read_kueue_all(api, "team-a", [{"metadata": {"name": "x", "uid": "u"}}]) == {}
    assert api.calls == []


def test_a_queued_job_gets_its_cluster_queue_and_position_where_served():
    api = FakeApi([load("workload-pending.json")])
    a = read_admission(api, "team-a", JOB)
    assert a.state == "Queued" and a.cluster_queue == "gpu-team-a" and a.position is None  # not served: silent
    assert api.calls == [f"list workloads {kueue.JOB_UID_LABEL}=job-uid-1", "list events",
                         "get localqueues team-a", "visibility"]
    api = FakeApi([load("workload-pending.json")], visibility={"items": [
        {"metadata": {"name": "other"}, "positionInLocalQueue": 0},
        {"metadata": {"name": "pytorchjob-train-a-3c1f9"}, "positionInLocalQueue": 1}]})
    assert read_admission(api, "team-a", JOB).position == 2


def test_an_admitted_job_reads_no_queue_and_its_events_give_every_eviction():
    api = FakeApi([load("workload-readmitted.json")])
    a = read_admission(api, "team-a", JOB)
    assert a.state == "Admitted" and len(a.evictions) == 2 and "get localqueues team-a" not in api.calls


def test_workloads_that_cannot_be_read_are_an_answer_not_an_error():
    a = read_admission(FakeApi([], forbidden=True), "team-a", JOB)
    assert a.state == "Unknown" and "HTTP 403" in a.message and kueue.short_state(a) == "Unknown"


def test_launch_list_reads_the_namespaces_workloads_once():
    other = {"metadata": {"name": "train-b", "uid": "job-uid-2", "labels": {kueue.QUEUE_LABEL: "team-a"}}}
    api = FakeApi([load("workload-admitted.json")])
    jobs = [JOB, other, {"metadata": {"name": "plain", "uid": "u3"}}]
    got = reads.read_kueue_all(api, "team-a", jobs)
    assert {k: kueue.short_state(kueue.of_reads(JOB if k == "train-a" else other, v)) for k, v in got.items()} == {
        "train-a": "Admitted", "train-b": "Waiting (gpu-team-a)"}
    assert api.calls == ["list workloads", "get localqueues team-a"]


def test_launch_status_prints_the_kueue_block_and_json_has_the_record(capsys):
    from launcher.status.report import print_status
    from tests.unit.test_kueue_admission import NOW

    a = read_admission(FakeApi([load("workload-requeued.json")]), "team-a", JOB)

    from launcher.status.model import JobStatus, Ledger, Progress

    def doc() -> JobStatus:
        return JobStatus(name="train-a", namespace="team-a", uid="u", state="Suspended", conditions=(), replicas={},
                         expected_pods=2, pods=(), restarts=0, restarts_by_pod={}, retries_left=3, causes=(),
                         create_failures=(), progress=Progress(), events=(), ledger=Ledger(None, "no checkpoint"),
                         admission=a, now=NOW)

    print_status(doc())
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("  kueue     Preempted → requeued 9m ago (LocalQueue team-a, ClusterQueue gpu-team-a): ")
    assert out[3].startswith("    evicted 2026-03-01T10:05:00Z: preempted by Kueue (InClusterQueue: Preempted to")
    assert out[4].startswith("    evicted 2026-03-01T10:20:00Z: preempted by Kueue")
    print_status(doc(), output="json")
    got = json.loads(capsys.readouterr().out)["admission"]
    assert got["state"] == "Requeued" and got["summary"] == "Preempted → requeued" and len(got["evictions"]) == 2


def test_pods_recreated_after_a_kueue_eviction_spend_no_retry():
    """The operator recreates a suspended PyTorchJob's pods when Kueue admits it again: not the pods' own exits."""
    import datetime

    from launcher.k8s.status import StatusReads
    from launcher.status.build import build
    from launcher.status.model import Ledger

    job = {**JOB, "kind": "PyTorchJob", "apiVersion": "kubeflow.org/v1",
           "spec": {"runPolicy": {"backoffLimit": 3}, "pytorchReplicaSpecs": {"Master": {"replicas": 1},
                                                                             "Worker": {"replicas": 1}}}}

    def pod(name: str, uid: str) -> dict:
        return {"metadata": {"name": name, "uid": uid, "creationTimestamp": "2026-03-01T10:00:00Z",
                             "labels": {"training.kubeflow.org/job-name": "train-a"}},
                "status": {"phase": "Running"}}

    # Two incarnations of each pod: the second made after Kueue's eviction and re-admission.
    events = [{"involvedObject": {"kind": "Pod", "name": n, "uid": u}, "reason": "Scheduled", "message": "",
               "firstTimestamp": "2026-03-01T10:00:00Z", "lastTimestamp": "2026-03-01T10:00:00Z", "count": 1}
              for n, u in (("train-a-master-0", "m1"), ("train-a-worker-0", "w1"))]
    reads_ = StatusReads(namespace="team-a", job=job, pods=(pod("train-a-master-0", "m2"), pod("train-a-worker-0", "w2")),
                         job_events=(), pod_events=tuple(events), log=None, jobset=None,
                         kueue=reads.KueueReads(queue="team-a", workload=load("workload-requeued.json")))
    status = build(reads_, Ledger(None, "no checkpoint"), datetime.datetime(2026, 3, 1, 11, tzinfo=datetime.timezone.utc))
    assert status.admission.evictions and status.retries_left == 3, (status.restarts, status.retries_left)
