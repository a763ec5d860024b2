"""Everything that talks to a cluster. The only module that imports `kubernetes`.

Transport errors become `ClusterError` here, once. Objects are created all or
none: the PyTorchJob first, then its ConfigMap and PDB owned by it, and on
any failure what was created is deleted again.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

from launcher import status as status_fmt
from launcher.errors import ClusterError, SpecError
from launcher.render import PYTORCHJOB_API
from launcher.spec import JobSpec
from trainer import contract
from trainer.errors import one_line

T = TypeVar("T")
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
CRD_NAME = f"{PLURAL}.{GROUP}"


@dataclasses.dataclass
class Api:
    core: Any
    custom: Any
    policy: Any
    ext: Any
    scheduling: Any


#: Seconds to connect and to wait for an answer, for every API call (a watch or `logs -f` stream:
#: to connect only). An API server that accepts connections but never answers is an error, not a hang.
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 30.0
_server = {"url": "the API server"}  # named in transport errors; set by connect()


def _with_timeouts(api_client: Any) -> None:
    """Give every request of this client the default timeouts unless the call sets its own."""
    rest = api_client.rest_client
    request = rest.request

    def timed(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or (CONNECT_TIMEOUT, READ_TIMEOUT), **kwargs)

    rest.request = timed


def connect(context: str | None = None) -> Api:
    """Clients from the kubeconfig (or in-cluster config); ClusterError when neither is there."""
    import os

    import urllib3
    from kubernetes import client, config

    path = os.environ.get("KUBECONFIG")
    try:
        # Pass the path read now: the client's own default is KUBECONFIG as it was at import time.
        config.load_kube_config(config_file=path or os.path.expanduser("~/.kube/config"), context=context)
    except Exception as kube_error:  # config.ConfigException, missing file, bad context
        if context:
            raise ClusterError(f"kubeconfig context {context!r}: {kube_error}") from None
        try:
            config.load_incluster_config()
        except Exception:
            if path and not any(os.path.exists(p) for p in path.split(os.pathsep)):
                raise ClusterError(f"no cluster configured: KUBECONFIG points at {path}, which does not exist; "
                                   "fix the path or unset it, or run here with --local") from None
            if path:
                raise ClusterError(f"no cluster configured: KUBECONFIG {path}: {one_line(str(kube_error))[:300]}") from None
            raise ClusterError("no cluster configured: set KUBECONFIG or ~/.kube/config, pass --context, "
                               "or run here with --local") from None
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
               scheduling=client.SchedulingV1Api(api_client))


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


def _call(what: str, fn: Callable[[], T], *, missing_ok: bool = False) -> T | None:
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
        raise ClusterError(f"{what}: {message} (HTTP {e.status})", status=e.status) from None
    except (HTTPError, OSError) as e:
        raise ClusterError(transport_error(what, e)) from None


# --- preflight -----------------------------------------------------------------


def _quantity(value: str) -> float:
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(value))


def gpu_quota_room(quotas: list[Any], resource: str) -> float | None:
    """The smallest room left for `resource` across ResourceQuotas (None: no quota limits it)."""
    room = None
    for q in quotas:
        hard = (q.status.hard if q.status and q.status.hard else q.spec.hard) or {}
        used = (q.status.used if q.status and q.status.used else {}) or {}
        for key in (f"requests.{resource}", f"limits.{resource}"):
            if key in hard:
                left = _quantity(hard[key]) - _quantity(used.get(key, "0"))
                room = left if room is None else min(room, left)
    return room


#: The PodGroup CRD each --gang scheduler brings; without it the pods wait for a scheduler that is not there.
GANG_PODGROUP_CRDS = {"volcano": "podgroups.scheduling.volcano.sh",
                      "scheduler-plugins": "podgroups.scheduling.x-k8s.io"}
INIT_CONTAINER_TEMPLATE = "k8s/operator/pytorch-init-container.yaml.tmpl"


def pod_security_warning(namespace_labels: dict, pods: int) -> str | None:
    """A namespace that enforces Pod Security `restricted` refuses the operator's own init container
    on worker pods (it has no securityContext) unless the cluster runs the operator with our template."""
    if pods > 1 and namespace_labels.get("pod-security.kubernetes.io/enforce") == "restricted":
        return ("the namespace enforces Pod Security 'restricted': the training operator's own init-pytorch "
                "container is refused there, so worker pods are never created unless the operator runs with "
                f"--pytorch-init-container-template-file={INIT_CONTAINER_TEMPLATE} (see README)")
    return None


def preflight(api: Api, spec: JobSpec) -> None:
    """Refuse before creating anything: CRD, namespace, quota, Secrets, PVCs, priority class."""
    ns = spec.namespace
    if _call("reading the PyTorchJob CRD", lambda: api.ext.read_custom_resource_definition(CRD_NAME),
             missing_ok=True) is None:
        raise SpecError(f"the cluster has no {CRD_NAME} CRD: install the Kubeflow training operator "
                        "(kubectl apply --server-side -k \"github.com/kubeflow/training-operator/manifests/overlays/standalone\")")
    if spec.gang:
        crd = GANG_PODGROUP_CRDS[spec.gang]
        if _call(f"reading the {crd} CRD", lambda: api.ext.read_custom_resource_definition(crd),
                 missing_ok=True) is None:
            raise SpecError(f"--gang {spec.gang}: the cluster has no {crd} CRD, so {spec.gang} is not installed and "
                            "the pods would wait forever; install it or drop --gang")
    namespace = _call(f"reading namespace {ns}", lambda: api.core.read_namespace(ns), missing_ok=True)
    if namespace is None:
        raise SpecError(f"namespace {ns!r} does not exist; create it or pass --namespace")
    warning = pod_security_warning((namespace.metadata.labels or {}), spec.nodes)
    if warning:
        print(f"launch: warning: {warning}", file=sys.stderr)
    need = spec.total_gpus
    if need:
        quotas = _call(f"listing ResourceQuotas in {ns}", lambda: api.core.list_namespaced_resource_quota(ns)).items
        room = gpu_quota_room(quotas, spec.resources.gpu_resource)
        if room is not None and room < need:
            raise SpecError(f"namespace {ns} has room for {room:g} {spec.resources.gpu_resource} under its "
                            f"ResourceQuota, the job asks for {need}; ask for fewer with --gpus or free some")
    for secret in spec.secret_env:
        if _call(f"reading Secret {secret}", lambda: api.core.read_namespaced_secret(secret, ns),
                 missing_ok=True) is None:
            raise SpecError(f"--secret-env {secret}: no such Secret in namespace {ns}")
    for vol in spec.volumes:
        if _call(f"reading PVC {vol.claim}", lambda: api.core.read_namespaced_persistent_volume_claim(vol.claim, ns),
                 missing_ok=True) is None:
            raise SpecError(f"--pvc {vol.claim}: no such PersistentVolumeClaim in namespace {ns}")
    if spec.priority_class and _call(f"reading PriorityClass {spec.priority_class}",
                                     lambda: api.scheduling.read_priority_class(spec.priority_class),
                                     missing_ok=True) is None:
        raise SpecError(f"--priority-class {spec.priority_class}: no such PriorityClass")


# --- create all or none ------------------------------------------------------------


def _create(api: Api, ns: str, obj: dict) -> dict:
    kind = obj["kind"]
    if kind == "PyTorchJob":
        return _call("creating the PyTorchJob", lambda: api.custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, obj))
    if kind == "ConfigMap":
        return _call("creating the code ConfigMap", lambda: api.core.create_namespaced_config_map(ns, obj))
    if kind == "PodDisruptionBudget":
        return _call("creating the PodDisruptionBudget",
                     lambda: api.policy.create_namespaced_pod_disruption_budget(ns, obj))
    raise AssertionError(f"unexpected kind {kind}")


def _delete(api: Api, ns: str, kind: str, name: str) -> None:
    from kubernetes import client

    # Background: the object goes now and the garbage collector removes its pods after.
    # Foreground would leave it behind, finalizer set, wherever no GC runs (and cancel would hang).
    body = client.V1DeleteOptions(propagation_policy="Background")
    fn = {"PyTorchJob": lambda: api.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                                                           body=body),
          "ConfigMap": lambda: api.core.delete_namespaced_config_map(name, ns, body=body),
          "PodDisruptionBudget": lambda: api.policy.delete_namespaced_pod_disruption_budget(name, ns, body=body)}[kind]
    _call(f"deleting {kind} {name}", fn, missing_ok=True)


def create_all(api: Api, ns: str, objects: list[dict]) -> None:
    """Create the job, then the rest owned by it; delete what was created if anything fails."""
    created: list[tuple[str, str]] = []
    try:
        try:
            job = _create(api, ns, objects[0])
        except ClusterError as e:
            if e.status == 409:
                name = objects[0]["metadata"]["name"]
                raise SpecError(f"a PyTorchJob {name!r} exists in namespace {ns} already; pick another --name, "
                                f"or `launch cancel {name} -n {ns}` first") from None
            raise
        created.append(("PyTorchJob", job["metadata"]["name"]))
        owner = {"apiVersion": PYTORCHJOB_API, "kind": "PyTorchJob", "name": job["metadata"]["name"],
                 "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        for obj in objects[1:]:
            obj = {**obj, "metadata": {**obj["metadata"], "ownerReferences": [owner]}}
            _create(api, ns, obj)
            created.append((obj["kind"], obj["metadata"]["name"]))
    except BaseException:
        for kind, name in reversed(created):
            try:
                _delete(api, ns, kind, name)
            except ClusterError as e:
                print(f"launch: warning: could not roll back {kind} {name}: {e}", file=sys.stderr)
        raise


def upload_bundle(uri: str, data: bytes) -> None:
    try:
        import fsspec

        with fsspec.open(uri, "wb") as f:
            f.write(data)
    except Exception as e:
        raise ClusterError(f"uploading the code bundle to {uri}: {e}") from None


def remove_bundle(uri: str) -> None:
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        fs.rm_file(path)
    except Exception as e:  # the failure that brought us here matters more
        print(f"launch: warning: could not remove the code bundle {uri}: {e}", file=sys.stderr)


# --- status, logs, cancel, list ----------------------------------------------------------


def get_job(api: Api, ns: str, name: str) -> dict:
    job = _call(f"reading PyTorchJob {name}", lambda: api.custom.get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name), missing_ok=True)
    if job is None:
        raise SpecError(f"no PyTorchJob {name!r} in namespace {ns} (see `launch list -n {ns}`)")
    return job


def _raw(response: Any) -> dict:
    """The JSON of a call made with `_preload_content=False`, as plain dicts.

    The client's typed models cost ~10 ms a pod to build (a Configuration per nested object,
    dateutil for every timestamp): 5.7 s of a 512-pod `status`. Plain JSON takes a few ms.
    """
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def job_pods(api: Api, ns: str, name: str, job_uid: str | None = None) -> list[Any]:
    """The job's pods, one list call by label; with job_uid, only those it owns (not a same-named job's)."""
    return _owned_sorted(_call("listing pods", lambda: api.core.list_namespaced_pod(
        ns, label_selector=f"{contract.OPERATOR_JOB_NAME_LABEL}={name}")).items, job_uid)


def job_pod_docs(api: Api, ns: str, name: str, job_uid: str | None = None) -> list[dict]:
    """job_pods as plain JSON dicts (the pod as the API serves it): one list call, no typed models."""
    return _owned_sorted(_call("listing pods", lambda: _raw(api.core.list_namespaced_pod(
        ns, label_selector=f"{contract.OPERATOR_JOB_NAME_LABEL}={name}", _preload_content=False)))["items"], job_uid)


def _owned_sorted(pods: list[Any], job_uid: str | None) -> list[Any]:
    if job_uid:
        pods = [p for p in pods if _owner_uid(p) in (None, job_uid)]
    return sorted(pods, key=lambda p: status_fmt.natural_key(pod_label(p)))


def _owner_uid(pod: Any) -> str | None:
    if isinstance(pod, dict):
        refs = pod.get("metadata", {}).get("ownerReferences") or []
        return next((o.get("uid") for o in refs if o.get("controller")), None)
    return next((o.uid for o in pod.metadata.owner_references or [] if o.controller), None)


def pod_label(pod: Any) -> str:
    """`worker-3`: replica type and index, of a typed pod or a pod's JSON."""
    labels = (pod.get("metadata", {}).get("labels") if isinstance(pod, dict) else pod.metadata.labels) or {}
    rtype = labels.get(contract.OPERATOR_REPLICA_TYPE_LABEL, "pod")
    return f"{rtype.lower()}-{labels.get(contract.OPERATOR_REPLICA_INDEX_LABEL, '?')}"


def job_state(job: dict) -> str:
    conds = (job.get("status") or {}).get("conditions") or []
    true = [c for c in conds if c.get("status") == "True"]
    return true[-1]["type"] if true else "Pending"


def describe_pod(pod: dict) -> dict:
    """A pod's JSON (as the API serves it) as the plain record launcher/status.py reads."""
    meta, spec, st = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    out = {"pod": meta.get("name"), "name": meta.get("name"), "uid": meta.get("uid"), "owner_uid": _owner_uid(pod),
           "replica": pod_label(pod), "phase": st.get("phase"), "node": spec.get("nodeName"), "restarts": 0,
           "deleting": meta.get("deletionTimestamp") is not None}
    for c in st.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            out["unschedulable"] = " ".join((c.get("message") or c["reason"]).split())
    for cs in st.get("containerStatuses") or []:
        if cs.get("name") != contract.CONTAINER_NAME:
            continue
        out["restarts"] = cs.get("restartCount") or 0
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting is not None and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            out["waiting"] = f"{waiting['reason']}: {waiting['message']}" if waiting.get("message") else waiting["reason"]
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term is not None:
            out["exit_code"] = term.get("exitCode")
            out["exit_meaning"] = contract.describe_exit_code(term.get("exitCode"))
            out["retryable"] = contract.is_retryable(term.get("exitCode"))
    return out


def _event_record(e: dict) -> dict:
    """An event's JSON as the plain record launcher/status.py reads ("created" a datetime)."""
    io = e.get("involvedObject") or {}
    return {"kind": io.get("kind"), "name": io.get("name"), "uid": io.get("uid"), "reason": e.get("reason") or "",
            "message": e.get("message") or "", "count": e.get("count") or 1, "type": e.get("type"),
            "created": status_fmt._time((e.get("metadata") or {}).get("creationTimestamp"))}


def _list_events(api: Api, ns: str, field_selector: str) -> list[dict]:
    """Events by field selector, every page of them, read as plain JSON (no typed models)."""
    out, token = [], None
    while True:
        got = _call("listing events", lambda: _raw(api.core.list_namespaced_event(
            ns, field_selector=field_selector, limit=1000, _continue=token, _preload_content=False)))
        out += [_event_record(e) for e in got.get("items") or []]
        token = (got.get("metadata") or {}).get("continue")
        if not token:
            return out


def runtime_progress(api: Api, ns: str, pod: Any) -> dict:
    """The newest committed step the runtime in this pod logged (last 500 lines), and when."""
    return _progress_of(api, ns, pod["metadata"]["name"] if isinstance(pod, dict) else pod.metadata.name)


def _progress_of(api: Api, ns: str, name: str) -> dict:
    text = _call(f"reading logs of {name}", lambda: api.core.read_namespaced_pod_log(
        name, ns, container=contract.CONTAINER_NAME, tail_lines=500, timestamps=True), missing_ok=True)
    return status_fmt.newest_commit((text or "").splitlines())


def restart_events(job_events: list[dict]) -> list[dict]:
    return [{"reason": e["reason"], "message": e["message"], "count": e["count"]} for e in job_events
            if e["reason"] and ("Restart" in e["reason"] or "Fail" in e["reason"] or "Evict" in e["reason"])]


POD_LOSS_CAUSES = status_fmt.POD_LOSS_CAUSES


def pod_recreations(api: Api, ns: str, name: str) -> int:
    """How often the job's pods were created again: pod UIDs per replica less one (launcher/status.py)."""
    job = get_job(api, ns, name)
    pods = [describe_pod(p) for p in job_pod_docs(api, ns, name, job["metadata"].get("uid"))]
    incarnations = status_fmt.pod_incarnations(job, pods, _list_events(api, ns, "involvedObject.kind=Pod"))
    return sum(status_fmt.count_restarts(incarnations).values())


def read_status(api: Api, ns: str, name: str, *, now: Any = None) -> dict:
    """Everything `launch status` shows, from one read of the job and one list call per kind.

    Restarts are pod UIDs per replica over the job's life (launcher/status.py), never summed events.
    """
    import datetime

    import time as _time

    from launcher import restart_ledger

    job = get_job(api, ns, name)
    ledger = restart_ledger.Reader(job)  # the runtime's restart ledger, read while the cluster is
    uid = job["metadata"].get("uid")
    listed = job_pod_docs(api, ns, name, uid)
    pods = [describe_pod(p) for p in listed]
    job_events = _list_events(api, ns, f"involvedObject.uid={uid}")
    pod_events = _list_events(api, ns, "involvedObject.kind=Pod")
    incarnations = status_fmt.pod_incarnations(job, pods, pod_events)
    per_pod = status_fmt.count_restarts(incarnations)
    restarts = sum(per_pod.values())
    causes = status_fmt.restart_causes(job, job_events, pod_events, incarnations)
    backoff = ((job.get("spec") or {}).get("runPolicy") or {}).get("backoffLimit")
    specs = (job.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    progress: dict = {"resumed_from": None, "preempted_at": None, "step": None, "at": None}
    # The newest committed step, from the first replica's log: one log read, not one per pod.
    first = next((p for p in pods if p["phase"] in ("Running", "Succeeded", "Failed")), None)
    if first is not None:
        try:
            progress = _progress_of(api, ns, first["name"])
        except ClusterError:
            pass  # logs are a bonus here; the status above stands without them
    for p in pods:
        p["restarts"] = per_pod.get(p["name"], 0)
        if first is not None and p["name"] == first["name"]:
            p.update({k: progress[k] for k in ("resumed_from", "preempted_at")})
    summary, unread = ledger.result(_time.time())
    return {"name": name, "namespace": ns, "uid": uid, "state": job_state(job),
            "conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message")}
                           for c in (job.get("status") or {}).get("conditions") or []],
            "replicas": (job.get("status") or {}).get("replicaStatuses") or {},
            "expected_pods": sum(s.get("replicas") or 1 for s in specs.values()),
            "pods": [{k: v for k, v in p.items() if k not in ("name", "owner_uid")} for p in pods],
            "restarts": restarts, "restarts_by_pod": {k: v for k, v in per_pod.items() if v},
            "retries_left": status_fmt.retries_left(backoff, restarts, causes),
            "causes": causes, "create_failures": status_fmt.create_failures(job_events),
            "committed_step": progress["step"],
            "committed_at": progress["at"].isoformat() if progress.get("at") else None,
            "events": restart_events(job_events),
            "ledger": restart_ledger.doc(summary) if summary is not None else {"not_shown": unread},
            "_ledger": (summary, unread), "_progress": progress, "_now": now or datetime.datetime.now(datetime.timezone.utc)}


def print_status(api: Api, ns: str, name: str, *, output: str = "text", all_pods: bool = False) -> int:
    doc = read_status(api, ns, name)
    from launcher import restart_ledger

    progress, now, (ledger, unread) = doc.pop("_progress"), doc.pop("_now"), doc.pop("_ledger")
    if output in ("json", "yaml"):
        print_doc(doc, output)
        return 0
    all_pods = all_pods or output == "wide"
    pods = [{**p, "name": p["pod"]} for p in doc["pods"]]
    for line in status_fmt.summary_lines(ns, name, doc["state"], pods, doc["expected_pods"], doc["restarts"],
                                         doc["retries_left"], doc["causes"], progress, now):
        print(line)
    for c in doc["conditions"]:
        print(f"  {c['type']:<10} {c['status']:<5} {c.get('reason') or ''}: {c.get('message') or ''}")
    if doc["create_failures"] and len(pods) < doc["expected_pods"]:
        print(f"  why: the operator cannot create the pods: {doc['create_failures'][0]}")
    for line in restart_ledger.lines(ledger) if ledger is not None else [restart_ledger.unread_line(unread)]:
        print("  " + line)
    rows = status_fmt.pod_rows(pods, {p["name"]: p["restarts"] for p in pods}, all_pods=all_pods)
    if rows:
        for line in status_fmt.table(status_fmt.POD_HEADER, rows, indent="  "):
            print(line)
    for c in doc["causes"]:
        then = ("retried" if c["retried"] else "not retried") if "exit_code" in c else f"x{c['count']}, pod recreated"
        print(f"  cause {c['replica']:<10} {c['cause']} ({then})")
    for e in doc["events"][-10:]:
        print(f"  event {e['reason']} x{e['count']}: {e['message']}")
    if not all_pods and len(rows) < len(pods):
        print(f"  ({len(pods) - len(rows)} healthy pod(s) not listed: --pods or -o wide lists every pod)")
    return 0


def print_doc(doc: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
    else:
        import yaml

        print(yaml.safe_dump(json.loads(json.dumps(doc, default=str)), sort_keys=True), end="")


#: Once the job has finished, log streams still open after this long are closed: a kubelet ends
#: them when the container exits, but one on a lost node (or kwok's, which never end) would
#: keep `launch logs -f` waiting forever.
LOG_DRAIN_SECONDS = 5.0


@dataclasses.dataclass
class _Streams:
    """What the per-pod log threads of one `launch logs` share."""
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)  # one line at a time on stdout
    open: list = dataclasses.field(default_factory=list)  # the HTTP responses being read
    drained: threading.Event = dataclasses.field(default_factory=threading.Event)  # set: close, stop, no error
    errors: list = dataclasses.field(default_factory=list)  # one line per pod whose log could not be read

    def drain(self, threads: list[threading.Thread]) -> None:
        """Let the streams of a finished job end on their own for LOG_DRAIN_SECONDS, then close the rest."""
        deadline = time.monotonic() + LOG_DRAIN_SECONDS
        for t in threads:
            t.join(max(deadline - time.monotonic(), 0))
        self.drained.set()
        for stream in list(self.open):
            _abort(stream)


def _abort(stream: Any) -> None:
    """Close a response another thread is blocked reading: close() alone does not wake a blocked recv()."""
    import socket

    sock = getattr(getattr(stream, "connection", None), "sock", None)  # urllib3's HTTPResponse -> socket
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
    stream.close()


def _waiting_for(pod: Any) -> str:
    """What a pending pod waits for, in a few words."""
    info = describe_pod(pod)
    return status_fmt.pod_problem(info) or "to be scheduled and started"


def _stream_pod(api: Api, ns: str, pod: Any, follow: bool, shared: _Streams) -> None:
    try:
        _stream_pod_lines(api, ns, pod, follow, shared)
    except ClusterError as e:
        if not shared.drained.is_set():
            shared.errors.append(str(e))
    except Exception as e:  # a broken read: said once, as one line, never a thread's traceback
        if not shared.drained.is_set():  # after the drain, a broken read is the end we asked for
            shared.errors.append(f"reading logs of {pod.metadata.name}: {one_line(str(e)) or type(e).__name__}")


def _stream_pod_lines(api: Api, ns: str, pod: Any, follow: bool, shared: _Streams) -> None:
    prefix = f"[{pod_label(pod)}] "
    name = pod.metadata.name
    said = None
    while follow and not shared.drained.is_set():  # a Pending pod has no log yet: wait for it rather than return
        p = _call(f"reading pod {name}", lambda: _raw(api.core.read_namespaced_pod(name, ns, _preload_content=False)),
                  missing_ok=True)
        if p is None or (p.get("status") or {}).get("phase") not in ("Pending", None):
            break
        waiting = _waiting_for(p)
        if waiting != said:
            with shared.lock:
                print(f"launch: {pod_label(p)} is Pending, waiting for it: {waiting}", file=sys.stderr, flush=True)
            said = waiting
        time.sleep(2)
    # Following: a time limit to connect only; the stream may rightly be quiet for a long time.
    stream = _call(f"reading logs of {name}", lambda: api.core.read_namespaced_pod_log(
        name, ns, container=contract.CONTAINER_NAME, follow=follow, _preload_content=False,
        _request_timeout=(CONNECT_TIMEOUT, None) if follow else None), missing_ok=True)
    if stream is None:
        return
    shared.open.append(stream)
    if shared.drained.is_set():  # drained while this one was opening
        _abort(stream)
    for line in _lines(stream):
        with shared.lock:
            sys.stdout.write(prefix + line + "\n")
            sys.stdout.flush()


def _lines(stream: Any) -> Iterator[str]:
    buf = b""
    for chunk in stream.stream(4096):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace")
    if buf:
        yield buf.decode(errors="replace")


def stream_logs(api: Api, ns: str, name: str, *, follow: bool) -> int:
    """Every pod's log, merged with a replica prefix; with follow, new pods are picked up as they appear."""
    job = get_job(api, ns, name)
    shared = _Streams()
    seen: set[str] = set()
    threads: list[threading.Thread] = []
    said = None
    while True:
        pods = job_pods(api, ns, name, job["metadata"].get("uid"))
        if follow and not pods:  # the operator has not created any pod (yet): say why we wait
            failures = status_fmt.create_failures(_list_events(api, ns, f"involvedObject.uid={job['metadata'].get('uid')}"))
            waiting = (f"the operator cannot create its pods: {failures[0]}" if failures
                       else "the training operator to create its pods")
            if waiting != said:
                print(f"launch: {ns}/{name} has no pods yet, waiting for {waiting}", file=sys.stderr, flush=True)
                said = waiting
        for pod in pods:
            if pod.metadata.uid not in seen:
                seen.add(pod.metadata.uid)
                t = threading.Thread(target=_stream_pod, args=(api, ns, pod, follow, shared), daemon=True)
                t.start()
                threads.append(t)
        if not follow:
            break
        if job_state(get_job(api, ns, name)) in ("Succeeded", "Failed"):
            shared.drain(threads)
            break
        time.sleep(2)
    for t in threads:
        t.join()
    for error in shared.errors:
        print(f"launch: error: {one_line(error)}", file=sys.stderr)
    return 1 if shared.errors else 0



def cancel(api: Api, ns: str, name: str) -> int:
    """Delete the job and everything labelled as its own (ConfigMaps, PDBs), not only what GC reaches."""
    get_job(api, ns, name)
    _delete(api, ns, "PyTorchJob", name)
    selector = f"{contract.LABEL_JOB}={name}"
    from launcher.render import code_configmap_name

    # By name too: a submit of the same name right after must not meet the old code ConfigMap
    # waiting for the garbage collector.
    cms = {cm.metadata.name for cm in _call("listing ConfigMaps", lambda: api.core.list_namespaced_config_map(
        ns, label_selector=selector)).items} | {code_configmap_name(name)}
    for cm in sorted(cms):
        _delete(api, ns, "ConfigMap", cm)
    for pdb in _call("listing PDBs", lambda: api.policy.list_namespaced_pod_disruption_budget(
            ns, label_selector=selector)).items:
        _delete(api, ns, "PodDisruptionBudget", pdb.metadata.name)
    print(f"cancelled {ns}/{name}")
    return 0


def print_list(api: Api, ns: str, *, output: str = "text") -> int:
    import datetime

    jobs = _call("listing PyTorchJobs", lambda: api.custom.list_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, label_selector=f"{contract.LABEL_MANAGED_BY}={contract.MANAGED_BY}"))["items"]
    rows = [{"name": j["metadata"]["name"], "state": job_state(j),
             "pods": sum(s.get("replicas") or 1 for s in ((j.get("spec") or {}).get("pytorchReplicaSpecs")
                                                          or {}).values()),
             "created": j["metadata"].get("creationTimestamp")} for j in jobs]
    if output in ("json", "yaml"):
        print_doc(rows, output)
        return 0
    header, table = status_fmt.job_rows(rows, datetime.datetime.now(datetime.timezone.utc), wide=output == "wide")
    print(status_fmt.render(header, table, f"No PyTorchJobs of launch in namespace {ns}."))
    return 0


# --- schedules: CronJobs, their Jobs, the submitter's RBAC and stored spec ------------------


def _batch(api: Api) -> Any:
    from kubernetes import client

    return client.BatchV1Api(api.core.api_client)


def _rbac(api: Api) -> Any:
    from kubernetes import client

    return client.RbacAuthorizationV1Api(api.core.api_client)


def _schedule_calls(api: Api, ns: str, kind: str) -> tuple[Callable, Callable, Callable]:
    """(create(obj), replace(name, obj), delete(name)) for the kinds a schedule is made of."""
    b, r, c = _batch(api), _rbac(api), api.core
    return {
        "ServiceAccount": (lambda o: c.create_namespaced_service_account(ns, o),
                           lambda n, o: c.replace_namespaced_service_account(n, ns, o),
                           lambda n: c.delete_namespaced_service_account(n, ns)),
        "Role": (lambda o: r.create_namespaced_role(ns, o), lambda n, o: r.replace_namespaced_role(n, ns, o),
                 lambda n: r.delete_namespaced_role(n, ns)),
        "RoleBinding": (lambda o: r.create_namespaced_role_binding(ns, o),
                        lambda n, o: r.replace_namespaced_role_binding(n, ns, o),
                        lambda n: r.delete_namespaced_role_binding(n, ns)),
        "CronJob": (lambda o: b.create_namespaced_cron_job(ns, o), lambda n, o: b.replace_namespaced_cron_job(n, ns, o),
                    lambda n: b.delete_namespaced_cron_job(n, ns, propagation_policy="Background")),
        "ConfigMap": (lambda o: c.create_namespaced_config_map(ns, o),
                      lambda n, o: c.replace_namespaced_config_map(n, ns, o),
                      lambda n: c.delete_namespaced_config_map(n, ns)),
    }[kind]


#: Shared by every schedule of a namespace: an existing one is brought up to date, never deleted by a rollback.
_SHARED_KINDS = ("ServiceAccount", "Role", "RoleBinding")


def create_schedule(api: Api, ns: str, objects: list[dict]) -> None:
    """The submitter's RBAC (created or updated), the CronJob, then its stored spec owned by it; all or none."""
    created: list[tuple[str, str]] = []
    owner: dict | None = None  # the CronJob, once created: it owns the stored spec
    try:
        for obj in objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            create, replace, _ = _schedule_calls(api, ns, kind)
            if obj["kind"] == "ConfigMap" and owner is not None:
                obj = {**obj, "metadata": {**obj["metadata"], "ownerReferences": [owner]}}
            try:
                got = _call(f"creating {kind} {name}", lambda: create(obj))
                created.append((kind, name))
            except ClusterError as e:
                if e.status != 409 or kind not in _SHARED_KINDS:
                    if e.status == 409:
                        schedule = obj["metadata"]["labels"].get(contract.LABEL_SCHEDULE, name)
                        raise SpecError(f"a {kind} {name!r} exists in namespace {ns} already; pick another --name, "
                                        f"or `launch schedule delete {schedule} -n {ns}` first") from None
                    raise
                if kind != "ServiceAccount":  # keep the token controller's fields; the rest is ours
                    _call(f"updating {kind} {name}", lambda: replace(name, obj))
                continue
            if kind == "CronJob":
                meta = got.metadata
                owner = {"apiVersion": "batch/v1", "kind": "CronJob", "name": meta.name, "uid": meta.uid,
                         "controller": True, "blockOwnerDeletion": True}
    except BaseException:
        for kind, name in reversed(created):
            try:
                _call(f"deleting {kind} {name}", lambda: _schedule_calls(api, ns, kind)[2](name), missing_ok=True)
            except ClusterError as e:
                print(f"launch: warning: could not roll back {kind} {name}: {e}", file=sys.stderr)
        raise


def get_cronjob(api: Api, ns: str, name: str) -> dict:
    got = _call(f"reading CronJob {name}", lambda: _batch(api).read_namespaced_cron_job(name, ns), missing_ok=True)
    if got is None:
        raise SpecError(f"no schedule {name!r} in namespace {ns} (see `launch schedule list -n {ns}`)")
    return api.core.api_client.sanitize_for_serialization(got)


def _job_finished(job: Any) -> bool:
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in (job.status.conditions or []))


def active_runs(api: Api, ns: str, schedule: str, *, mine: str | None = None) -> list[str]:
    """Runs of `schedule` still going, by name: unfinished PyTorchJobs, and unfinished Jobs (their submitters).

    The CronJob controller does not count a Job made by `launch schedule trigger` (or kubectl) as
    active, so its own Forbid can start a run beside one; the submitter of run `mine` asks here
    too. Of two submitters started together the older Job goes on: with `mine`, only Jobs
    created before it count.
    """
    selector = f"{contract.LABEL_SCHEDULE}={schedule}"
    jobs = _call("listing PyTorchJobs", lambda: api.custom.list_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, label_selector=selector))["items"]
    names = {j["metadata"]["name"] for j in jobs if job_state(j) not in ("Succeeded", "Failed")}
    batch_jobs = _call("listing Jobs", lambda: _batch(api).list_namespaced_job(ns, label_selector=selector)).items
    own = next((j for j in batch_jobs if j.metadata.name == mine), None)

    def older(j: Any) -> bool:
        return own is None or (j.metadata.creation_timestamp, j.metadata.name) < (
            own.metadata.creation_timestamp, own.metadata.name)

    names |= {j.metadata.name for j in batch_jobs if not _job_finished(j) and older(j)}
    names.discard(mine)
    return sorted(names)


def find_job(api: Api, ns: str, name: str) -> dict | None:
    """The PyTorchJob, or None when there is none."""
    return _call(f"reading PyTorchJob {name}", lambda: api.custom.get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name), missing_ok=True)


#: An annotation whose only purpose is to change the job, so that its operator reconciles it.
TOUCHED_ANNOTATION = "kubetrain.dev/touched-at"


def touch_job(api: Api, ns: str, name: str) -> None:
    """Change an annotation of the PyTorchJob, so that the operator looks at it again."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _call(f"annotating PyTorchJob {name}", lambda: api.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, {"metadata": {"annotations": {TOUCHED_ANNOTATION: stamp}}}),
        missing_ok=True)


def create_job(api: Api, ns: str, job: dict) -> None:
    _call(f"creating Job {job['metadata']['name']}", lambda: _batch(api).create_namespaced_job(ns, job))


def list_schedules(api: Api, ns: str) -> list[dict]:
    """Each schedule with its last runs, from the CronJobs and the Jobs they started."""
    selector = f"{contract.LABEL_MANAGED_BY}={contract.MANAGED_BY}"
    cronjobs = _call("listing CronJobs", lambda: _batch(api).list_namespaced_cron_job(ns, label_selector=selector)).items
    jobs = _call("listing Jobs", lambda: _batch(api).list_namespaced_job(ns, label_selector=selector)).items
    rows = []
    for cj in sorted(cronjobs, key=lambda c: c.metadata.name):
        name = cj.metadata.name
        mine = sorted((j for j in jobs if (j.metadata.labels or {}).get(contract.LABEL_SCHEDULE) == name),
                      key=lambda j: j.metadata.name)
        runs = [{"name": j.metadata.name, "state": _job_state(j)} for j in mine]
        rows.append({"name": name, "schedule": cj.spec.schedule, "time_zone": cj.spec.time_zone,
                     "suspended": bool(cj.spec.suspend),
                     "last_schedule": cj.status.last_schedule_time.isoformat() if cj.status and
                     cj.status.last_schedule_time else None, "runs": runs})
    return rows


def _job_state(job: Any) -> str:
    for c in job.status.conditions or []:
        if c.status == "True" and c.type in ("Complete", "Failed"):
            return "Succeeded" if c.type == "Complete" else "Failed"
    return "Active"


def delete_schedule(api: Api, ns: str, name: str) -> None:
    """The CronJob; its stored spec and Jobs go with it (owned). Runs already started keep running."""
    get_cronjob(api, ns, name)
    _call(f"deleting CronJob {name}", lambda: _schedule_calls(api, ns, "CronJob")[2](name), missing_ok=True)
    # Where no garbage collector runs the owned ConfigMap would stay: delete it by name too.
    from launcher.schedule_render import stored_configmap_name

    cm = stored_configmap_name(name)
    _call(f"deleting ConfigMap {cm}", lambda: _schedule_calls(api, ns, "ConfigMap")[2](cm), missing_ok=True)


def read_configmap(api: Api, ns: str, name: str) -> Any:
    """The ConfigMap, or None when there is none."""
    return _call(f"reading ConfigMap {name}", lambda: api.core.read_namespaced_config_map(name, ns), missing_ok=True)


def namespace_quota_room(api: Api, ns: str, resource: str) -> float | None:
    """Room left for `resource` under the namespace's ResourceQuotas (reads nothing cluster-scoped)."""
    quotas = _call(f"listing ResourceQuotas in {ns}", lambda: api.core.list_namespaced_resource_quota(ns)).items
    return gpu_quota_room(quotas, resource)


# --- faults, for `launch chaos JOB` ---------------------------------------------


def delete_pod(api: Api, ns: str, name: str, *, grace_seconds: int) -> None:
    _call(f"deleting pod {name}", lambda: api.core.delete_namespaced_pod(
        name, ns, grace_period_seconds=grace_seconds), missing_ok=True)


def evict_pod(api: Api, ns: str, name: str, *, grace_seconds: int | None) -> str | None:
    """Evict through the Eviction API (PodDisruptionBudgets honoured); the refusal's message, or None.

    grace_seconds None: the pod's own terminationGracePeriodSeconds, as `kubectl drain` does.
    """
    body: dict[str, Any] = {"apiVersion": "policy/v1", "kind": "Eviction",
                            "metadata": {"name": name, "namespace": ns}}
    if grace_seconds is not None:
        body["deleteOptions"] = {"gracePeriodSeconds": grace_seconds}
    try:
        _call(f"evicting pod {name}", lambda: api.core.create_namespaced_pod_eviction(name, ns, body),
              missing_ok=True)
    except ClusterError as e:
        if e.status == 429:  # "Cannot evict pod as it would violate the pod's disruption budget."
            return str(e)
        raise
    return None


def set_unschedulable(api: Api, node: str, unschedulable: bool) -> None:
    """Cordon (True) or uncordon (False) a node, as `kubectl cordon` does."""
    _call(f"{'cordoning' if unschedulable else 'uncordoning'} node {node}", lambda: api.core.patch_node(
        node, {"spec": {"unschedulable": unschedulable or None}}))
