"""The connection to a cluster and the one way every request is made.

Transport errors become `ClusterError` here, once, naming the server; every request
has a time limit. Objects of any kind are created, read, replaced and deleted through
one table (`_TYPED`, and the backends' custom resources), and `create_all` makes a set
of objects all or none: on any failure what it created is deleted again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Iterable, TypeVar

from launcher import backends
from launcher.errors import ClusterError, SpecError, one_line

T = TypeVar("T")


@dataclasses.dataclass
class Api:
    core: Any
    custom: Any
    policy: Any
    ext: Any
    scheduling: Any
    batch: Any
    rbac: Any


#: Seconds to connect and to wait for an answer, for every API call (a watch or `logs -f` stream:
#: to connect only). An API server that accepts connections but never answers is an error, not a hang.
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 30.0
_server = {"url": "the API server"}  # named in transport errors; set by connect()


def _with_timeouts(api_client: Any) -> None:
    """Give every request of this client the default timeouts unless the call sets its own."""
    rest = api_client.rest_client
    request = rest.request

    def timed(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        # READ_TIMEOUT read at each call: tests shorten it.
        return request(*args, _request_timeout=_request_timeout or (CONNECT_TIMEOUT, READ_TIMEOUT), **kwargs)

    rest.request = timed


def connect(context: str | None = None) -> Api:
    """Clients from the kubeconfig (or in-cluster config); ClusterError when neither is there."""
    import urllib3
    from kubernetes import client, config

    path = os.environ.get("KUBECONFIG")
    try:
        # Pass the path read now: the client's own default is KUBECONFIG as it was at import time.
        config.load_kube_config(config_file=path or os.path.expanduser("~/.kube/config"), context=context)
    except Exception as kube_error:  # config.ConfigException, missing file, bad context
        if context:
            raise ClusterError(f"kubeconfig context {context!r}: {kube_error}") from kube_error
        try:
            config.load_incluster_config()
        except Exception:
            if path and not any(os.path.exists(p) for p in path.split(os.pathsep)):
                raise ClusterError(f"no cluster configured: KUBECONFIG points at {path}, which does not exist; "
                                   "fix the path or unset it, or run here with --local") from kube_error
            if path:
                raise ClusterError(f"no cluster configured: KUBECONFIG {path}: "
                                   f"{one_line(str(kube_error))[:300]}") from kube_error
            raise ClusterError("no cluster configured: set KUBECONFIG or ~/.kube/config, pass --context, "
                               "or run here with --local") from kube_error
    conf = client.Configuration.get_default_copy()
    if not conf.verify_ssl:
        # The kubeconfig asked for insecure-skip-tls-verify; like kubectl, do not warn on every request.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    # No retries of a read that timed out (each would wait READ_TIMEOUT again); refused connections twice.
    conf.retries = urllib3.Retry(total=2, connect=2, read=0, status=0, redirect=0, raise_on_status=False)
    _server["url"] = conf.host
    api_client = client.ApiClient(conf)
    _with_timeouts(api_client)
    return Api(core=client.CoreV1Api(api_client), custom=client.CustomObjectsApi(api_client),
               policy=client.PolicyV1Api(api_client), ext=client.ApiextensionsV1Api(api_client),
               scheduling=client.SchedulingV1Api(api_client), batch=client.BatchV1Api(api_client),
               rbac=client.RbacAuthorizationV1Api(api_client))


def transport_error(what: str, error: BaseException) -> str:
    """One short line for a request that got no HTTP answer: which server, and what happened."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError, SSLError

    server = _server["url"]
    cause = error.reason if isinstance(error, MaxRetryError) and error.reason is not None else error
    if isinstance(cause, ReadTimeoutError) or "timed out" in str(cause).lower():
        return (f"{what}: the API server {server} did not answer within {READ_TIMEOUT:g}s "
                "(it accepts connections but is not responding)")
    if isinstance(cause, NewConnectionError) or "refused" in str(cause).lower():
        return f"{what}: cannot connect to the API server {server} (connection refused)"
    if isinstance(cause, SSLError):
        return f"{what}: TLS to the API server {server} failed: {one_line(str(cause))[:200]}"
    if isinstance(cause, ProtocolError):
        return f"{what}: the API server {server} closed the connection"
    return f"{what}: cannot reach the API server {server}: {one_line(str(cause))[:200]}"


def call(what: str, fn: Callable[[], T], *, missing_ok: bool = False) -> T | None:
    """fn(), with its failure as one ClusterError line that starts with `what`; None for a 404 if missing_ok."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn()
    except ApiException as e:
        if missing_ok and e.status == 404:
            return None
        try:
            message = json.loads(e.body).get("message") or e.reason
        except (TypeError, ValueError):
            message = e.reason
        raise ClusterError(f"{what}: {message} (HTTP {e.status})", status=e.status) from e
    except (HTTPError, OSError) as e:
        raise ClusterError(transport_error(what, e)) from e


def raw(response: Any) -> dict:
    """The JSON of a call made with `_preload_content=False`, as plain dicts.

    The client's typed models cost ~10 ms a pod to build (a Configuration per nested object,
    dateutil for every timestamp): 5.7 s of a 512-pod `status`. Plain JSON takes a few ms.
    """
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


# --- one table for every kind the launcher creates ---------------------------------------------

#: kind -> (the Api client that serves it, the noun in its method names). Custom resources: the backends.
_TYPED = {
    "ConfigMap": ("core", "config_map"),
    "ServiceAccount": ("core", "service_account"),
    "PodDisruptionBudget": ("policy", "pod_disruption_budget"),
    "Role": ("rbac", "role"),
    "RoleBinding": ("rbac", "role_binding"),
    "CronJob": ("batch", "cron_job"),
    "Job": ("batch", "job"),
}


def _method(api: Api, verb: str, kind: str) -> Callable[..., Any]:
    client, noun = _TYPED[kind]
    return getattr(getattr(api, client), f"{verb}_namespaced_{noun}")


def create(api: Api, ns: str, obj: dict, *, what: str | None = None, dry_run: bool = False) -> dict:
    """Create `obj` in `ns`; the object the server returned, as a dict.

    dry_run: the server admits it (webhooks included) and answers as if created, but stores nothing.
    """
    kind = obj["kind"]
    what = what or f"creating {kind} {obj['metadata']['name']}"
    extra = {"dry_run": "All"} if dry_run else {}
    custom = backends.CUSTOM_KINDS.get(kind)
    if custom is not None:
        return call(what, lambda: api.custom.create_namespaced_custom_object(*custom[:2], ns, custom[2], obj, **extra))
    got = call(what, lambda: _method(api, "create", kind)(ns, obj, **extra))
    return api.core.api_client.sanitize_for_serialization(got)


def read(api: Api, ns: str, kind: str, name: str) -> Any:
    """The object, or None when there is none (custom resources as dicts, the rest as the client's models)."""
    custom = backends.CUSTOM_KINDS.get(kind)
    if custom is not None:
        return call(f"reading {kind} {name}", lambda: api.custom.get_namespaced_custom_object(
            *custom[:2], ns, custom[2], name), missing_ok=True)
    return call(f"reading {kind} {name}", lambda: _method(api, "read", kind)(name, ns), missing_ok=True)


def replace(api: Api, ns: str, obj: dict) -> None:
    kind, name = obj["kind"], obj["metadata"]["name"]
    call(f"updating {kind} {name}", lambda: _method(api, "replace", kind)(name, ns, obj))


def delete(api: Api, ns: str, kind: str, name: str) -> None:
    """Delete if there; what it owns goes too."""
    from kubernetes import client

    # Background: the object goes now and the garbage collector removes what it owns after.
    # Foreground would leave it behind, finalizer set, wherever no GC runs (and cancel would hang).
    body = client.V1DeleteOptions(propagation_policy="Background")
    custom = backends.CUSTOM_KINDS.get(kind)
    if custom is not None:
        fn = lambda: api.custom.delete_namespaced_custom_object(  # noqa: E731
            *custom[:2], ns, custom[2], name, body=body)
    else:
        fn = lambda: _method(api, "delete", kind)(name, ns, body=body)  # noqa: E731
    call(f"deleting {kind} {name}", fn, missing_ok=True)


def owner_reference(obj: dict) -> dict:
    """An ownerReference to a created object: the garbage collector deletes what it owns with it."""
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def patch_owner(api: Api, ns: str, obj: dict, owner: dict) -> None:
    """Make a created custom object owned by `owner` (created after it), so the garbage collector removes it too."""
    group, version, plural = backends.CUSTOM_KINDS[obj["kind"]]
    name = obj["metadata"]["name"]
    call(f"setting the owner of {obj['kind']} {name}", lambda: api.custom.patch_namespaced_custom_object(
        group, version, ns, plural, name, {"metadata": {"ownerReferences": [owner]}}))


def create_all(api: Api, ns: str, objects: Iterable[dict], *, owner_kind: str, conflict: Callable[[dict], str | None],
               what: Callable[[dict], str] | None = None, shared_kinds: tuple[str, ...] = ()) -> None:
    """Create `objects` in order, all or none.

    Objects after the one of `owner_kind` are owned by it. An object of `shared_kinds` that exists
    already is brought up to date and never deleted by a rollback (a ServiceAccount is left as it
    is: the token controller writes to it). Any other that exists is SpecError(conflict(obj)), or
    the ClusterError when conflict gives None. On any failure, what this call created is deleted
    again, newest first.
    """
    created: list[tuple[str, str]] = []
    owner: dict | None = None
    try:
        for obj in objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            if owner is not None:
                obj = {**obj, "metadata": {**obj["metadata"], "ownerReferences": [owner]}}
            try:
                got = create(api, ns, obj, what=what(obj) if what else None)
            except ClusterError as e:
                if e.status != 409:
                    raise
                if kind in shared_kinds:
                    if kind != "ServiceAccount":
                        replace(api, ns, obj)
                    continue
                message = conflict(obj)
                if message is None:
                    raise
                raise SpecError(message) from e
            created.append((kind, name))
            if kind == owner_kind:
                owner = owner_reference({**got, "apiVersion": obj["apiVersion"], "kind": kind})
    except BaseException:
        for kind, name in reversed(created):
            try:
                delete(api, ns, kind, name)
            except ClusterError as e:
                print(f"launch: warning: could not roll back {kind} {name}: {e}", file=sys.stderr)
        raise
