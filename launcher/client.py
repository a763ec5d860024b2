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

from launcher.errors import ClusterError, SpecError
from launcher.render import PYTORCHJOB_API
from launcher.spec import JobSpec
from trainer import contract

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


def connect(context: str | None = None) -> Api:
    """Clients from the kubeconfig (or in-cluster config); ClusterError when neither is there."""
    import os

    from kubernetes import client, config

    try:
        # Pass the path read now: the client's own default is KUBECONFIG as it was at import time.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config"),
                                context=context)
    except Exception as kube_error:  # config.ConfigException, missing file, bad context
        if context:
            raise ClusterError(f"kubeconfig context {context!r}: {kube_error}") from None
        try:
            config.load_incluster_config()
        except Exception:
            raise ClusterError("no cluster configured: set KUBECONFIG or ~/.kube/config, pass --context, "
                               "or run here with --local") from None
    if not client.Configuration.get_default_copy().verify_ssl:
        # The kubeconfig asked for insecure-skip-tls-verify; like kubectl, do not warn on every request.
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return Api(core=client.CoreV1Api(), custom=client.CustomObjectsApi(), policy=client.PolicyV1Api(),
               ext=client.ApiextensionsV1Api(), scheduling=client.SchedulingV1Api())


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
        raise ClusterError(f"{what}: cannot reach the API server: {e}") from None


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


def preflight(api: Api, spec: JobSpec) -> None:
    """Refuse before creating anything: CRD, namespace, quota, Secrets, PVCs, priority class."""
    ns = spec.namespace
    if _call("reading the PyTorchJob CRD", lambda: api.ext.read_custom_resource_definition(CRD_NAME),
             missing_ok=True) is None:
        raise SpecError(f"the cluster has no {CRD_NAME} CRD: install the Kubeflow training operator "
                        "(kubectl apply --server-side -k \"github.com/kubeflow/training-operator/manifests/overlays/standalone\")")
    if _call(f"reading namespace {ns}", lambda: api.core.read_namespace(ns), missing_ok=True) is None:
        raise SpecError(f"namespace {ns!r} does not exist; create it or pass --namespace")
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
        job = _create(api, ns, objects[0])
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


def job_pods(api: Api, ns: str, name: str) -> list[Any]:
    pods = _call("listing pods", lambda: api.core.list_namespaced_pod(
        ns, label_selector=f"{contract.OPERATOR_JOB_NAME_LABEL}={name}")).items
    return sorted(pods, key=lambda p: pod_label(p))


def pod_label(pod: Any) -> str:
    labels = pod.metadata.labels or {}
    rtype = labels.get(contract.OPERATOR_REPLICA_TYPE_LABEL, "pod")
    return f"{rtype.lower()}-{labels.get(contract.OPERATOR_REPLICA_INDEX_LABEL, '?')}"


def job_state(job: dict) -> str:
    conds = (job.get("status") or {}).get("conditions") or []
    true = [c for c in conds if c.get("status") == "True"]
    return true[-1]["type"] if true else "Pending"


def describe_pod(pod: Any) -> dict:
    out = {"pod": pod.metadata.name, "replica": pod_label(pod), "phase": pod.status.phase,
           "node": pod.spec.node_name, "restarts": 0}
    for cs in pod.status.container_statuses or []:
        if cs.name != contract.CONTAINER_NAME:
            continue
        out["restarts"] = cs.restart_count
        term = (cs.state and cs.state.terminated) or (cs.last_state and cs.last_state.terminated)
        if term is not None:
            out["exit_code"] = term.exit_code
            out["exit_meaning"] = contract.describe_exit_code(term.exit_code)
            out["retryable"] = contract.is_retryable(term.exit_code)
    return out


def runtime_progress(api: Api, ns: str, pod: Any) -> dict:
    """What the runtime in this pod logged about resuming and preemption (last 500 lines)."""
    text = _call(f"reading logs of {pod.metadata.name}", lambda: api.core.read_namespaced_pod_log(
        pod.metadata.name, ns, container=contract.CONTAINER_NAME, tail_lines=500), missing_ok=True)
    return contract.parse_runtime_log((text or "").splitlines())


def restart_events(api: Api, ns: str, name: str) -> list[dict]:
    events = _call("listing events", lambda: api.core.list_namespaced_event(
        ns, field_selector=f"involvedObject.name={name}")).items
    return [{"reason": e.reason, "message": e.message, "count": e.count or 1} for e in events
            if e.reason and ("Restart" in e.reason or "Fail" in e.reason or "Evict" in e.reason)]


def print_status(api: Api, ns: str, name: str, *, output: str = "text") -> int:
    job = get_job(api, ns, name)
    pods = []
    for p in job_pods(api, ns, name):
        info = describe_pod(p)
        if p.status.phase in ("Running", "Succeeded", "Failed"):
            try:
                info.update(runtime_progress(api, ns, p))
            except ClusterError:
                pass  # logs are a bonus here; the status above stands without them
        pods.append(info)
    backoff = ((job.get("spec") or {}).get("runPolicy") or {}).get("backoffLimit")
    events = restart_events(api, ns, name)
    restarts = sum(e["count"] for e in events if "Restart" in e["reason"])
    doc = {"name": name, "namespace": ns, "state": job_state(job),
           "conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message")}
                          for c in (job.get("status") or {}).get("conditions") or []],
           "replicas": (job.get("status") or {}).get("replicaStatuses") or {},
           "pods": pods, "restarts": restarts, "retries_left": None if backoff is None else max(backoff - restarts, 0),
           "events": events}
    if output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(f"{ns}/{name}: {doc['state']}" + (f"  (restarts {restarts}, {doc['retries_left']} retries left)"
                                            if backoff is not None else ""))
    for c in doc["conditions"]:
        print(f"  {c['type']:<10} {c['status']:<5} {c.get('reason') or ''}: {c.get('message') or ''}")
    for p in pods:
        exit_text = f"  last exit {p['exit_code']}: {p['exit_meaning']}" if "exit_code" in p else ""
        if p.get("preempted_at") is not None:
            exit_text += f"; preempted at step {p['preempted_at']}"
        if p.get("resumed_from") is not None:
            exit_text += f"; resumed from step {p['resumed_from']}"
        print(f"  {p['replica']:<10} {p['phase'] or '?':<10} node={p['node'] or '-'}{exit_text}")
    for e in events:
        print(f"  event {e['reason']} x{e['count']}: {e['message']}")
    return 0


def _stream_pod(api: Api, ns: str, pod: Any, follow: bool, lock: threading.Lock) -> None:
    prefix = f"[{pod_label(pod)}] "
    name = pod.metadata.name
    while follow:  # a Pending pod has no log yet: wait for it rather than return
        p = _call(f"reading pod {name}", lambda: api.core.read_namespaced_pod(name, ns), missing_ok=True)
        if p is None or p.status.phase not in ("Pending", None):
            break
        time.sleep(2)
    stream = _call(f"reading logs of {name}", lambda: api.core.read_namespaced_pod_log(
        name, ns, container=contract.CONTAINER_NAME, follow=follow, _preload_content=False), missing_ok=True)
    if stream is None:
        return
    for line in _lines(stream):
        with lock:
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
    get_job(api, ns, name)
    lock = threading.Lock()
    seen: set[str] = set()
    threads: list[threading.Thread] = []
    while True:
        for pod in job_pods(api, ns, name):
            if pod.metadata.uid not in seen:
                seen.add(pod.metadata.uid)
                t = threading.Thread(target=_stream_pod, args=(api, ns, pod, follow, lock), daemon=True)
                t.start()
                threads.append(t)
        if not follow:
            break
        if job_state(get_job(api, ns, name)) in ("Succeeded", "Failed") and not any(t.is_alive() for t in threads):
            break
        time.sleep(2)
    for t in threads:
        t.join()
    return 0


def cancel(api: Api, ns: str, name: str) -> int:
    """Delete the job and everything labelled as its own (ConfigMaps, PDBs), not only what GC reaches."""
    get_job(api, ns, name)
    _delete(api, ns, "PyTorchJob", name)
    selector = f"{contract.LABEL_JOB}={name}"
    for cm in _call("listing ConfigMaps", lambda: api.core.list_namespaced_config_map(ns, label_selector=selector)).items:
        _delete(api, ns, "ConfigMap", cm.metadata.name)
    for pdb in _call("listing PDBs", lambda: api.policy.list_namespaced_pod_disruption_budget(
            ns, label_selector=selector)).items:
        _delete(api, ns, "PodDisruptionBudget", pdb.metadata.name)
    print(f"cancelled {ns}/{name}")
    return 0


def print_list(api: Api, ns: str, *, output: str = "text") -> int:
    jobs = _call("listing PyTorchJobs", lambda: api.custom.list_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, label_selector=f"{contract.LABEL_MANAGED_BY}={contract.MANAGED_BY}"))["items"]
    rows = [{"name": j["metadata"]["name"], "state": job_state(j),
             "created": j["metadata"].get("creationTimestamp")} for j in jobs]
    if output == "json":
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<60} {r['state']:<10} {r['created']}")
    return 0
