"""A job's pods for `launch status`, asked for in the API server's cheapest forms: only what status shows.

The whole JSON of every pod (spec, env, managedFields) costs the API server encoding and us
parsing, and grew `status` with the pods (3.98 s at 4,096). So did the Table form with each
row's metadata (`includeObject=Metadata`): a pod's metadata is 5 KB of JSON, 4 KB of it
managedFields, 21 MB at 4,096 pods. Two lists instead:

- kubectl's columns alone (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`,
  `includeObject=None`, about 150 bytes a pod): name, STATUS, RESTARTS, NODE;
- the pods' metadata as a PartialObjectMetadataList in protobuf (launcher/k8s/protobuf.py reads
  name, uid, labels, owner and deletion, and skips managedFields by its length); JSON where the
  server serves no protobuf.

Each comes in one page up to 5,000 pods (PAGE: the API server's watch cache serves only first
pages), then `continue`. A row whose STATUS is `Running` with 0 restarts and no deletion says
everything status shows of it; every other pod (pending, waiting, exited, terminating, or one
the two lists do not both have) is read whole, so its reasons and exit code are the API's own.
Each settled row becomes the slim pod JSON launcher/records.describe_pod reads.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

from launcher.k8s import protobuf
from launcher.k8s.api import Api, call, raw
from launcher.records import natural_key, owner_uid, replica_id

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"
METADATA = f"{protobuf.METADATA_LIST}, application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
METADATA_JSON = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io, application/json"
#: Pods a page, for every list here. Only a list's first page is served from the API server's
#: watch cache: each page after it (a `continue` token) is read from etcd, whole pods decoded and
#: converted again. The metadata of 4,096 pods cost the API server 0.62 CPU-s in pages of 500
#: (kubectl's chunk size), 0.15 in one. One page is 18 MB of metadata at 4,096 pods, 0.6 MB of columns.
PAGE = 5000
#: More pods than this to read whole: one list of them all is cheaper than a read each.
READ_EACH_UP_TO = 32


def _send(api: Api, path: str, query: list[tuple[str, Any]], accept: str) -> Any:
    """The response unread (`_preload_content=False`): the caller reads `.data` and releases it."""
    return api.core.api_client.call_api(
        path, "GET", {}, query, {"Accept": accept}, auth_settings=["BearerToken"],
        _preload_content=False, _return_http_data_only=True)


def _get(api: Api, path: str, query: list[tuple[str, Any]], accept: str) -> dict:
    return raw(_send(api, path, query, accept))


def _get_bytes(api: Api, path: str, query: list[tuple[str, Any]], accept: str) -> tuple[str, bytes]:
    """(the answer's Content-Type, its body)."""
    response = _send(api, path, query, accept)
    try:
        return str(response.headers.get("Content-Type") or ""), response.data
    finally:
        response.release_conn()


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


def metadata_page(content_type: str, body: bytes) -> tuple[list[dict], str | None]:
    """(the items' metadata, the continue token or None) of a PartialObjectMetadataList, protobuf or JSON."""
    if content_type.startswith("application/vnd.kubernetes.protobuf"):
        return protobuf.metadata_list(body)
    doc = json.loads(body)
    return ([i.get("metadata") or {} for i in doc.get("items") or []],
            (doc.get("metadata") or {}).get("continue") or None)


def pod_metadata(api: Api, ns: str, selector: str, accept: str = METADATA) -> dict[str, dict]:
    """{pod name: its metadata} of the pods `selector` picks, every page; protobuf where the server serves it.

    A protobuf answer this reader cannot read is asked for again, all pages, as JSON (slower, same fields).
    """
    out: dict[str, dict] = {}
    token = None
    while True:
        query = [("labelSelector", selector), ("limit", PAGE)] + ([("continue", token)] if token else [])
        content_type, body = call("listing pods", lambda: _get_bytes(
            api, f"/api/v1/namespaces/{ns}/pods", query, accept)) or ("", b"{}")
        try:
            items, token = metadata_page(content_type, body)
        except ValueError:
            if accept == METADATA_JSON:
                raise
            return pod_metadata(api, ns, selector, METADATA_JSON)
        out.update((m.get("name"), m) for m in items)
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
    rows = _pages(api, ns, selector, TABLE, "listing pods", [("includeObject", "None")])
    if rows and "_columns" not in rows[0]:  # a server that does not serve the Table form: pod JSON
        pods = rows
    else:
        metas = pod_metadata(api, ns, selector) if rows else {}
        pods, unsettled = [], []
        for r in rows:
            cells = dict(zip(r["_columns"], r.get("cells") or []))
            meta = metas.get(cells.get("Name"))
            if meta is not None and _settled(cells, meta):
                pods.append(_slim(cells, meta))
            else:  # not Running, restarted, terminating; or made or gone between the two lists
                unsettled.append(cells.get("Name"))
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
