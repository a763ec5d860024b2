"""launcher/k8s/pods.py: the job's pods in the Table form, paged; only unsettled pods are read whole."""

from __future__ import annotations

import json
import types

import pytest

from launcher.backends import pytorchjob
from launcher.records import describe_pod

pytest.importorskip("kubernetes")

from launcher.k8s import pods as k8s_pods  # noqa: E402

COLUMNS = [{"name": n} for n in ("Name", "Ready", "Status", "Restarts", "Age", "IP", "Node")]


def meta(name: str, index: int, **extra) -> dict:
    return {"name": name, "uid": f"uid-{name}", "ownerReferences": [{"uid": "job-1", "controller": True}],
            "labels": {pytorchjob.POD_JOB_LABEL: "j", "training.kubeflow.org/replica-type": "worker",
                       "training.kubeflow.org/replica-index": str(index)}, **extra}


class Resp:
    def __init__(self, doc: object) -> None:
        self.data = json.dumps(doc).encode()

    def release_conn(self) -> None:
        pass


class FakeApi:
    """Serves 5 pods as a Table, two rows a page: worker-3 crash-looping, worker-4 terminating."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict]] = []
        self.core = types.SimpleNamespace(api_client=types.SimpleNamespace(call_api=self._call))
        status = {3: ("CrashLoopBackOff", "4 (10s ago)"), 4: ("Terminating", "0")}
        self.rows = [{"cells": [f"j-worker-{i}", "1/1", status.get(i, ("Running",))[0],
                                status.get(i, (None, "0"))[1], "5m", "10.0.0.1", f"n{i}"],
                      "object": {"metadata": meta(f"j-worker-{i}", i, **(
                          {"deletionTimestamp": "2026-01-01T00:00:00Z"} if i == 4 else {}))}} for i in range(5)]

    def _call(self, path, method, path_params, query, headers, **kwargs):
        q = dict(query)
        self.calls.append((path, headers["Accept"], q))
        if path.endswith("/pods"):
            start = int(q.get("continue") or 0)
            rows = self.rows[start:start + 2]
            token = str(start + 2) if start + 2 < len(self.rows) else None
            return Resp({"kind": "Table", "columnDefinitions": COLUMNS, "rows": rows,
                         "metadata": {"continue": token} if token else {}})
        name = path.rsplit("/", 1)[-1]
        i = int(name.rsplit("-", 1)[-1])
        return Resp({"metadata": meta(name, i), "spec": {"nodeName": f"n{i}"}, "status": {
            "phase": "Running", "containerStatuses": [{"name": "pytorch", "restartCount": 4, "state": {
                "waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1}}}]}})


def test_settled_pods_come_from_the_table_and_the_rest_are_read_whole(monkeypatch):
    monkeypatch.setattr(k8s_pods, "PAGE", 2)
    api = FakeApi()
    got = k8s_pods.status_pods(api, "ns", "j", "job-1", pytorchjob)
    records = [describe_pod(p) for p in got]
    assert [r["replica"] for r in records] == [f"worker-{i}" for i in range(5)]
    assert records[0] == {"pod": "j-worker-0", "name": "j-worker-0", "uid": "uid-j-worker-0", "owner_uid": "job-1",
                          "replica": "worker-0", "phase": "Running", "node": "n0", "restarts": 0, "deleting": False}
    assert records[3]["waiting"] == "CrashLoopBackOff" and records[3]["exit_code"] == 1
    lists = [c for c in api.calls if c[0].endswith("/pods")]
    assert len(lists) == 3 and all("as=Table" in c[1] and c[2]["includeObject"] == "Metadata" for c in lists)
    assert [c[0].rsplit("/", 1)[-1] for c in api.calls if not c[0].endswith("/pods")] == ["j-worker-3", "j-worker-4"]
