"""Which training APIs the cluster serves, from one discovery call (for `launch --backend auto`)."""

from __future__ import annotations

from launcher import backends
from launcher.k8s.api import Api, call, raw

#: Aggregated discovery (apidiscovery.k8s.io/v2, GA in Kubernetes 1.30): every group with its
#: resources in one answer. An older server answers the plain APIGroupList instead.
_ACCEPT = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"


def served(doc: dict) -> set[str]:
    """CRD names (plural.group) the backends need that a /apis answer serves.

    From an APIGroupList (no resources named) a backend counts as served when its group and version are.
    """
    out = set()
    for item in doc.get("items") or []:  # APIGroupDiscoveryList
        group = (item.get("metadata") or {}).get("name")
        for v in item.get("versions") or []:
            out |= {f"{r.get('resource')}.{group}" for r in v.get("resources") or []}
    for g in doc.get("groups") or []:  # APIGroupList
        versions = {v.get("version") for v in g.get("versions") or []}
        out |= {b.CRD_NAME for b in backends.BACKENDS.values() if b.GROUP == g.get("name") and b.VERSION in versions}
    return out


def served_crds(api: Api) -> set[str]:
    client = api.core.api_client
    return served(call("discovering the cluster's APIs", lambda: raw(client.call_api(
        "/apis", "GET", header_params={"Accept": _ACCEPT}, auth_settings=["BearerToken"],
        _preload_content=False, _return_http_data_only=True))))
