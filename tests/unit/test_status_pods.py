"""launcher/k8s/pods.py: the job's pods as the Table's columns and their metadata, paged; only unsettled
pods are read whole.

tests/fixtures/pods/ (see tests/unit/test_k8s_protobuf.py) also holds the Table with `includeObject=None`
of the three pods in `metadata*` (`table-columns.json`: two Pending, one Terminating) and of the
512-pod job's first three (`running-table.json`, all Running).
"""

from __future__ import annotations

import json
import os
import types

import pytest

from launcher.backends import pytorchjob
from launcher.records import describe_pod
from tests.helpers import REPO

pytest.importorskip("kubernetes")

from launcher.k8s import pods as k8s_pods  # noqa: E402
from launcher.k8s import protobuf  # noqa: E402

FIXTURES = os.path.join(REPO, "tests", "fixtures", "pods")
COLUMNS = [{"name": n} for n in ("Name", "Ready", "Status", "Restarts", "Age", "IP", "Node")]
PROTOBUF, JSON = "application/vnd.kubernetes.protobuf", "application/json"


def fixture(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def meta(name: str, index: int, **extra) -> dict:
    return {"name": name, "uid": f"uid-{name}", "ownerReferences": [{"uid": "job-1", "controller": True}],
            "labels": {pytorchjob.POD_JOB_LABEL: "j", "training.kubeflow.org/replica-type": "worker",
                       "training.kubeflow.org/replica-index": str(index)}, **extra}


class Resp:
    def __init__(self, doc: object, content_type: str = JSON) -> None:
        self.data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.headers = {"Content-Type": content_type}

    def release_conn(self) -> None:
        pass


def test_a_json_metadata_page_reads_the_same():
    items, token = k8s_pods.metadata_page("application/json", fixture("metadata.json"))
    assert [m["name"] for m in items] == ["j-worker-0", "j-worker-1", "j-worker-2"] and token is None
    assert "managedFields" in items[0]  # JSON carries them; nothing reads them


# --- status_pods: the two lists joined ------------------------------------------------------------


class FakeApi:
    """Serves 5 pods: the Table's columns, their metadata (`metadata_pages`, protobuf, first, in order;
    then JSON), and single pods; worker-3 crash-looping, worker-4 terminating."""

    def __init__(self, rows=None, metadata_pages=None) -> None:
        self.calls: list[tuple[str, str, dict]] = []
        self.core = types.SimpleNamespace(api_client=types.SimpleNamespace(call_api=self._call))
        status = {3: ("CrashLoopBackOff", "4 (10s ago)"), 4: ("Terminating", "0")}
        self.rows = rows if rows is not None else [
            {"cells": [f"j-worker-{i}", "1/1", status.get(i, ("Running",))[0], status.get(i, (None, "0"))[1],
                       "5m", "10.0.0.1", f"n{i}"], "object": None} for i in range(5)]
        self.metas = [meta(f"j-worker-{i}", i, **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if i == 4 else {}))
                      for i in range(5)]
        self.metadata_pages = list(metadata_pages or [])

    def _page(self, items: list, q: dict) -> tuple[list, dict]:
        token = q.get("continue") or "0"
        if not token.isdigit():  # a recorded protobuf page's token: nothing after it here
            return [], {}
        start, size = int(token), int(q["limit"])
        token = str(start + size) if start + size < len(items) else None
        return items[start:start + size], {"continue": token} if token else {}

    def _call(self, path, method, path_params, query, headers, **kwargs):
        q = dict(query)
        self.calls.append((path, headers["Accept"], q))
        if path.endswith("/pods") and "as=Table" in headers["Accept"]:
            rows, page_meta = self._page(self.rows, q)
            return Resp({"kind": "Table", "columnDefinitions": COLUMNS, "rows": rows, "metadata": page_meta})
        if path.endswith("/pods") and "as=PartialObjectMetadataList" in headers["Accept"]:
            if self.metadata_pages and headers["Accept"].startswith(PROTOBUF):
                return Resp(self.metadata_pages.pop(0), PROTOBUF)
            items, page_meta = self._page(self.metas, q)
            return Resp({"kind": "PartialObjectMetadataList", "items": [{"metadata": m} for m in items],
                         "metadata": page_meta})
        name = path.rsplit("/", 1)[-1]
        i = int(name.rsplit("-", 1)[-1])
        return Resp({"metadata": meta(name, i), "spec": {"nodeName": f"n{i}"}, "status": {
            "phase": "Running", "containerStatuses": [{"name": "pytorch", "restartCount": 4, "state": {
                "waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1}}}]}})


def test_settled_pods_come_from_the_columns_and_metadata_and_the_rest_are_read_whole(monkeypatch):
    monkeypatch.setattr(k8s_pods, "PAGE", 2)
    api = FakeApi()
    got = k8s_pods.status_pods(api, "ns", "j", "job-1", pytorchjob)
    records = [describe_pod(p) for p in got]
    assert [r["replica"] for r in records] == [f"worker-{i}" for i in range(5)]
    assert records[0] == {"pod": "j-worker-0", "name": "j-worker-0", "uid": "uid-j-worker-0", "owner_uid": "job-1",
                          "replica": "worker-0", "phase": "Running", "node": "n0", "restarts": 0, "deleting": False}
    assert records[3]["waiting"] == "CrashLoopBackOff" and records[3]["exit_code"] == 1
    tables = [c for c in api.calls if "as=Table" in c[1]]
    assert len(tables) == 3 and all(c[2]["includeObject"] == "None" and c[2]["limit"] == 2 for c in tables)
    metadata = [c for c in api.calls if "as=PartialObjectMetadataList" in c[1]]
    assert len(metadata) == 3 and all(c[1].startswith(PROTOBUF) and c[2]["limit"] == 2 for c in metadata)
    assert [c[0].rsplit("/", 1)[-1] for c in api.calls if not c[0].endswith("/pods")] == ["j-worker-3", "j-worker-4"]


def test_a_pod_the_metadata_list_lacks_is_read_whole():
    api = FakeApi()
    api.metas = api.metas[1:]  # j-worker-0 made between the two lists
    got = [describe_pod(p) for p in k8s_pods.status_pods(api, "ns", "j", "job-1", pytorchjob)]
    assert [r["replica"] for r in got] == [f"worker-{i}" for i in range(5)]
    assert [c[0].rsplit("/", 1)[-1] for c in api.calls if not c[0].endswith("/pods")] == [
        "j-worker-0", "j-worker-3", "j-worker-4"]


def test_recorded_running_pods_are_settled_from_protobuf_with_no_pod_read():
    table = json.loads(fixture("running-table.json"))
    api = FakeApi(rows=table["rows"], metadata_pages=[fixture("running-metadata.pb")])
    api.metas = []  # the protobuf page's continue token leads to an empty JSON page
    job_uid = protobuf.metadata_list(fixture("running-metadata.pb"))[0][0]["ownerReferences"][0]["uid"]
    got = [describe_pod(p) for p in k8s_pods.status_pods(api, "ns", "held", job_uid, pytorchjob)]
    assert [(r["replica"], r["phase"], r["node"], r["deleting"]) for r in got] == [
        ("master-0", "Running", "gpu-scale-268", False), ("worker-0", "Running", "gpu-scale-499", False),
        ("worker-1", "Running", "gpu-scale-20", False)]
    assert all(r["uid"] and r["owner_uid"] == job_uid for r in got)
    assert all(c[0].endswith("/pods") for c in api.calls)  # no pod read whole


def test_recorded_pending_and_terminating_pods_are_read_whole():
    table = json.loads(fixture("table-columns.json"))
    api = FakeApi(rows=table["rows"], metadata_pages=[fixture("metadata-page-1.pb"), fixture("metadata-page-2.pb")])
    k8s_pods.status_pods(api, "ns", "j", None, pytorchjob)
    assert [c[0].rsplit("/", 1)[-1] for c in api.calls if not c[0].endswith("/pods")] == [
        "j-worker-0", "j-worker-1", "j-worker-2"]


def test_an_unreadable_protobuf_answer_is_asked_for_again_as_json():
    api = FakeApi(metadata_pages=[b"k8s\x00\x12\xff"])
    got = [describe_pod(p) for p in k8s_pods.status_pods(api, "ns", "j", "job-1", pytorchjob)]
    assert got[0]["uid"] == "uid-j-worker-0"
    accepts = [c[1] for c in api.calls if "as=PartialObjectMetadataList" in c[1]]
    assert accepts[0].startswith(PROTOBUF) and all(a.startswith(JSON) for a in accepts[1:]), accepts
