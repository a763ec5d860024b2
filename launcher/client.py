"""Everything that talks to a cluster. The only module that imports `kubernetes`.

Transport errors become `ClusterError` here, once. Objects are created all or
none: the PyTorchJob first, then its ConfigMap and PDB owned by it, and on
any failure what was created is deleted again.
"""

from __future__ import annotations

import dataclasses
import json
import re
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
    return [{"reason": e.reason, "message": e.message, "count": e.count or 1} for e in _events(api, ns, name)
            if e.reason and ("Restart" in e.reason or "Fail" in e.reason or "Evict" in e.reason)]


#: Why a pod went away other than by exiting, by the reason of the event on the pod. The
#: operator recreates it (same name); like a Job's disruptions, it does not spend the retry budget.
POD_LOSS_CAUSES = {
    "TaintManagerEviction": "evicted: its node was tainted NoExecute (not ready, unreachable, out of service)",
    "NodeNotReady": "its node became not ready",  # context: the eviction that follows is the loss
    "Preempted": "preempted by a higher-priority pod",
    "Evicted": "evicted by the kubelet (node pressure)",
}
_NOT_A_LOSS = {"NodeNotReady"}
# The operator's event on the job each time it sees a container exit.
_EXITED = re.compile(r"Pod: [^.\s]+\.(\S+) exited with code (-?\d+)")


def _events(api: Api, ns: str, involved: str) -> list[Any]:
    return _call("listing events", lambda: api.core.list_namespaced_event(
        ns, field_selector=f"involvedObject.name={involved}")).items


def pod_recreations(api: Api, ns: str, name: str) -> int:
    """How often the operator created a pod again under a name it had used: one per restart, whatever the cause.

    Its Restarting events are no count: it sends several per restart, and one for an eviction too.
    Events are all Kubernetes keeps of past pods; client-go's spam filter (25 per object, then one
    per 5 minutes) and the API server's event TTL (1 h) make this a lower bound for busy or old jobs.
    """
    created: dict[str, int] = {}
    for e in _events(api, ns, name):
        if e.reason == "SuccessfulCreatePod":  # "Created pod: <name>", aggregated with a count
            created[e.message] = created.get(e.message, 0) + (e.count or 1)
    return sum(n - 1 for n in created.values())


def replica_pod_names(job: dict, pods: list[Any]) -> list[str]:
    """Every pod name the job has had: the operator names them <job>-<replica type>-<index>, and reuses the name."""
    name = job["metadata"]["name"]
    specs = (job.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    names = {f"{name}-{rtype.lower()}-{i}" for rtype, s in specs.items() for i in range(s.get("replicas") or 1)}
    return sorted(names | {p.metadata.name for p in pods})


def restart_causes(api: Api, ns: str, job: dict, pods: list[Any]) -> list[dict]:
    """Each distinct reason a pod of the job ended early: its exit code's meaning, an eviction, a preemption."""
    prefix = job["metadata"]["name"] + "-"
    causes: dict[tuple[str, str], dict] = {}
    for e in _events(api, ns, job["metadata"]["name"]):
        m = e.reason == "ExitedWithCode" and _EXITED.search(e.message or "")
        if m and int(m.group(2)) != 0:
            code = int(m.group(2))
            cause = f"exit {code}: {contract.describe_exit_code(code)}"
            causes.setdefault((m.group(1), cause), {"pod": m.group(1), "cause": cause, "exit_code": code,
                                                    "retried": contract.is_retryable(code)})
    for pod in replica_pod_names(job, pods):
        for e in _events(api, ns, pod):
            # The taint manager uses the same reason when it cancels an eviction.
            if e.reason in POD_LOSS_CAUSES and not (e.message or "").startswith("Cancelling"):
                c = causes.setdefault((pod, POD_LOSS_CAUSES[e.reason]), {
                    "pod": pod, "cause": POD_LOSS_CAUSES[e.reason], "reason": e.reason, "retried": True, "count": 0})
                c["count"] += e.count or 1
    for c in causes.values():
        c["replica"] = c["pod"][len(prefix):] if c["pod"].startswith(prefix) else c["pod"]
    return list(causes.values())


def print_status(api: Api, ns: str, name: str, *, output: str = "text") -> int:
    job = get_job(api, ns, name)
    pods = []
    listed = job_pods(api, ns, name)
    for p in listed:
        info = describe_pod(p)
        if p.status.phase in ("Running", "Succeeded", "Failed"):
            try:
                info.update(runtime_progress(api, ns, p))
            except ClusterError:
                pass  # logs are a bonus here; the status above stands without them
        pods.append(info)
    backoff = ((job.get("spec") or {}).get("runPolicy") or {}).get("backoffLimit")
    events = restart_events(api, ns, name)
    causes = restart_causes(api, ns, job, listed)
    restarts = pod_recreations(api, ns, name)
    losses = sum(c.get("count", 0) for c in causes if c.get("reason") not in _NOT_A_LOSS)
    spent = max(restarts - losses, 0)  # restarts after the pod's own exit
    doc = {"name": name, "namespace": ns, "state": job_state(job),
           "conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message")}
                          for c in (job.get("status") or {}).get("conditions") or []],
           "replicas": (job.get("status") or {}).get("replicaStatuses") or {},
           "pods": pods, "restarts": restarts, "retries_left": None if backoff is None else max(backoff - spent, 0),
           "causes": causes, "events": events}
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
    for c in doc["causes"]:
        then = ("retried" if c["retried"] else "not retried") if "exit_code" in c else f"x{c['count']}, pod recreated"
        print(f"  cause {c['replica']:<10} {c['cause']} ({then})")
    for e in events:
        print(f"  event {e['reason']} x{e['count']}: {e['message']}")
    return 0


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


def _stream_pod(api: Api, ns: str, pod: Any, follow: bool, shared: _Streams) -> None:
    prefix = f"[{pod_label(pod)}] "
    name = pod.metadata.name
    while follow and not shared.drained.is_set():  # a Pending pod has no log yet: wait for it rather than return
        p = _call(f"reading pod {name}", lambda: api.core.read_namespaced_pod(name, ns), missing_ok=True)
        if p is None or p.status.phase not in ("Pending", None):
            break
        time.sleep(2)
    stream = _call(f"reading logs of {name}", lambda: api.core.read_namespaced_pod_log(
        name, ns, container=contract.CONTAINER_NAME, follow=follow, _preload_content=False), missing_ok=True)
    if stream is None:
        return
    shared.open.append(stream)
    if shared.drained.is_set():  # drained while this one was opening
        _abort(stream)
    try:
        for line in _lines(stream):
            with shared.lock:
                sys.stdout.write(prefix + line + "\n")
                sys.stdout.flush()
    except Exception:
        if not shared.drained.is_set():  # after the drain, a broken read is the end we asked for
            raise


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
    shared = _Streams()
    seen: set[str] = set()
    threads: list[threading.Thread] = []
    while True:
        for pod in job_pods(api, ns, name):
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
