"""A job's pods for `launch status`, asked for in the API server's Table form: only what status shows.

The whole JSON of every pod (spec, env, managedFields) costs the API server encoding and us
parsing, and grew `status` with the pods (3.98 s at 4,096). The Table form (as kubectl asks:
`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`, `includeObject=Metadata`) serves
per pod its metadata and kubectl's columns, paged with `limit`/`continue`. A row whose STATUS
is `Running` with 0 restarts and no deletion says everything status shows of it; every other
pod (pending, waiting, exited, terminating) is read whole, so its reasons and exit code are
the API's own. Each row becomes the slim pod JSON launcher/records.describe_pod reads.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from launcher.k8s.api import Api, call, raw
from launcher.records import natural_key, owner_uid, replica_id

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"
PAGE = 500  # kubectl's chunk size
#: More pods than this to read whole: one list of them all is cheaper than a read each.
READ_EACH_UP_TO = 32


def _get(api: Api, path: str, query: list[tuple[str, Any]], accept: str) -> dict:
    return raw(api.core.api_client.call_api(
        path, "GET", {}, query, {"Accept": accept}, auth_settings=["BearerToken"],
        _preload_content=False, _return_http_data_only=True))


def _pages(api: Api, ns: str, selector: str, accept: str, what: str, extra: list[tuple[str, Any]]) -> list[dict]:
    """Every page of a pod list; the items (JSON) or rows (Table), in the server's order."""
    out: list[dict] = []
    token = None
    while True:
        query = [("labelSelector", selector), ("limit", PAGE), *extra] + ([("continue", token)] if token else [])
        got = call(what, lambda: _get(api, f"/api/v1/namespaces/{ns}/pods", query, accept))
        if got.get("kind") == "Table":  # each row carries the page's column names: cells are by position
            names = [c.get("name") for c in got.get("columnDefinitions") or []]
            out += [{**r, "_columns": names} for r in got.get("rows") or []]
        else:
            out += got.get("items") or []
        token = (got.get("metadata") or {}).get("continue")
        if not token:
            return out


def _settled(cells: dict[str, Any], meta: dict) -> bool:
    """Running, never restarted, not being deleted: nothing more to say of the pod than its table row."""
    restarts = str(cells.get("Restarts", "")).split(" ", 1)[0]
    return cells.get("Status") == "Running" and restarts == "0" and meta.get("deletionTimestamp") is None


def _slim(cells: dict[str, Any], meta: dict) -> dict:
    node = cells.get("Node")
    return {"metadata": meta, "spec": {"nodeName": node if node and node != "<none>" else None},
            "status": {"phase": "Running"}}


def status_pods(api: Api, ns: str, name: str, job_uid: str | None, backend: ModuleType) -> list[dict]:
    """The job's pods as pod JSON (settled ones slim, the rest whole), those it owns, in natural replica order."""
    selector = f"{backend.POD_JOB_LABEL}={name}"
    rows = _pages(api, ns, selector, TABLE, "listing pods", [("includeObject", "Metadata")])
    if rows and "_columns" not in rows[0]:  # a server that does not serve the Table form: pod JSON
        pods = rows
    else:
        pods, unsettled = [], []
        for r in rows:
            meta = (r.get("object") or {}).get("metadata") or {}
            cells = dict(zip(r["_columns"], r.get("cells") or []))
            if _settled(cells, meta):
                pods.append(_slim(cells, meta))
            else:
                unsettled.append(meta.get("name"))
        if len(unsettled) > READ_EACH_UP_TO:
            whole = {p["metadata"]["name"]: p for p in _pages(api, ns, selector, "application/json",
                                                                 "listing pods", [])}
            pods += [whole[n] for n in unsettled if n in whole]
        else:
            pods += [p for p in (call(f"reading pod {n}", lambda n=n: _get(
                api, f"/api/v1/namespaces/{ns}/pods/{n}", [], "application/json"), missing_ok=True)
                for n in unsettled) if p is not None]
    if backend.OWNS_PODS and job_uid:
        pods = [p for p in pods if owner_uid(p) in (None, job_uid)]
    return sorted(pods, key=lambda p: natural_key(replica_id(p)))
