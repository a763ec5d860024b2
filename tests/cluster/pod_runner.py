"""A kubelet for the tests: runs the pods of one job for real, as local processes.

kwok binds and "starts" every pod; for the pods of the job named RUN_FOR_REAL
(k8s/kwok/stages.yaml leaves their completion and deletion alone) this runner
then does what a kubelet would: it runs the container's command with the pod's
env, its volumes as local folders and the job's addresses mapped to 127.0.0.1,
writes the output as the container log kwok serves (CRI format), reports the
exit code in the pod's status, and on deletion sends SIGTERM, waits out the
grace period, then removes the pod. So the real operator drives the real
runtime (torchrun, checkpoints, restarts) end to end. The container is a
PyTorchJob's `pytorch` or a TrainJob's `node`; a projected volume gets its
service account token from the TokenRequest API (audience, expiry, bound to the
pod, as a kubelet asks) and its ConfigMap items; a `*.svc` URL in the env (the
Trainer's status endpoint) is called at 127.0.0.1.
"""

from __future__ import annotations

import base64
import datetime
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from tests.helpers import REPO
from trainer import contract

RUN_FOR_REAL = "real"  # the job name; also in k8s/kwok/stages.yaml
#: The container run: a PyTorchJob's, or a TrainJob's (the Trainer's plugins fill the one named `node`).
CONTAINERS = (contract.CONTAINER_NAME, "node")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodRunner:
    def __init__(self, core: Any, root, log_dir) -> None:
        self.core, self.root, self.log_dir = core, root, log_dir
        self.procs: dict[str, tuple[Any, subprocess.Popen]] = {}  # pod uid -> (pod, process)
        self.terminating: set[str] = set()  # pod uids being stopped (a thread each: grace periods overlap)
        self.exits: list[tuple[str, int]] = []  # (pod name, exit code) of every container that ended
        self.ports: dict[tuple[str, str], int] = {}  # (namespace, master service) -> local port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "PodRunner":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for _, proc in self.procs.values():
            if proc.poll() is None:
                _kill_container(proc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            pods = self.core.list_pod_for_all_namespaces(label_selector=f"{contract.LABEL_JOB}={RUN_FOR_REAL}").items
            for pod in pods:
                self._step(pod)
            self._reap({p.metadata.uid for p in pods})
            time.sleep(0.3)

    def _step(self, pod) -> None:
        uid = pod.metadata.uid
        if pod.metadata.deletion_timestamp is not None:
            if uid not in self.terminating:
                self.terminating.add(uid)
                threading.Thread(target=self._terminate, args=(pod,), daemon=True).start()
        elif uid not in self.procs and pod.status.phase == "Running" and pod.spec.node_name:
            self.procs[uid] = (pod, self._start(pod))
        elif uid in self.procs and self.procs[uid][1].poll() is not None and pod.status.phase == "Running":
            self.exits.append((pod.metadata.name, self.procs[uid][1].returncode))
            self._report_exit(pod, self.procs[uid][1].returncode)

    def _reap(self, alive: set[str]) -> None:
        for uid in [u for u in self.procs if u not in alive]:
            pod, proc = self.procs.pop(uid)
            if proc.poll() is None:
                _kill_container(proc)

    # --- what a kubelet does --------------------------------------------------------------

    def _start(self, pod) -> subprocess.Popen:
        container = _container(pod)
        mounts = self._volumes(pod, container)
        env = {**os.environ, "PYTHONPATH": REPO, "PYTHONUNBUFFERED": "1"}
        for e in container.env or []:
            value = e.value if e.value is not None else _field(pod, e.value_from)
            if value is not None:
                env[e.name] = self._local(pod, e.name, _remap(value, mounts))
        cmd = [_remap(a, mounts) for a in (container.command or []) + (container.args or [])]
        if cmd and cmd[0] == "python":
            cmd[0] = sys.executable  # the image's python is this venv's
        workdir = self.root / "pods" / pod.metadata.uid / "cwd"
        workdir.mkdir(parents=True)
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        threading.Thread(target=self._log, args=(pod, proc), daemon=True).start()
        return proc

    def _volumes(self, pod, container) -> dict[str, str]:
        """mountPath -> a local folder: emptyDir per pod, ConfigMap written out, PVC per claim (shared)."""
        local = {}
        for v in pod.spec.volumes or []:
            if v.persistent_volume_claim is not None:
                path = self.root / "pvc" / pod.metadata.namespace / v.persistent_volume_claim.claim_name
            else:
                path = self.root / "pods" / pod.metadata.uid / "volumes" / v.name
            path.mkdir(parents=True, exist_ok=True)
            if v.config_map is not None:
                self._config_map(pod, v.config_map.name, None, path)
            for source in (v.projected.sources if v.projected is not None else None) or []:
                if source.config_map is not None:
                    self._config_map(pod, source.config_map.name, source.config_map.items, path, missing_ok=True)
                if source.service_account_token is not None:
                    self._token(pod, source.service_account_token, path)
            local[v.name] = str(path)
        return {m.mount_path: local[m.name] for m in container.volume_mounts or []}

    def _config_map(self, pod, name: str, items, path, missing_ok: bool = False) -> None:
        """A ConfigMap's keys as files (only `items`, at their paths, when given).

        missing_ok: a projected source's; the one a pod's automounted service account volume names
        (kube-root-ca.crt) is published by a controller this tier does not run, and nothing reads it.
        """
        from kubernetes.client.exceptions import ApiException

        try:
            cm = self.core.read_namespaced_config_map(name, pod.metadata.namespace)
        except ApiException as e:
            if e.status == 404 and missing_ok:
                return
            raise
        files = {k: v.encode() for k, v in (cm.data or {}).items()}
        files.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        for key, target in ([(i.key, i.path) for i in items] if items else [(k, k) for k in files]):
            (path / target).write_bytes(files[key])

    def _token(self, pod, projection, path) -> None:
        """A projected service account token, as a kubelet requests it: the pod's account, bound to the pod."""
        request = {"spec": {"audiences": [projection.audience] if projection.audience else None,
                            "expirationSeconds": projection.expiration_seconds or 3600,
                            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name,
                                               "uid": pod.metadata.uid}}}
        got = self.core.create_namespaced_service_account_token(pod.spec.service_account_name or "default",
                                                                 pod.metadata.namespace, request)
        (path / projection.path).write_text(got.status.token)

    def _local(self, pod, name: str, value: str) -> str:
        """The job's master address is a Service name: here every pod is 127.0.0.1, at a port of its own;
        so is any other Service a URL names (https://<service>.<namespace>.svc:<port>/...)."""
        if name.endswith("MASTER_ADDR"):
            return "127.0.0.1"
        if name.endswith("MASTER_PORT"):
            addr = name[:-len("PORT")] + "ADDR"  # MASTER_ADDR, or the Trainer's PET_MASTER_ADDR
            master = next(e.value for e in _container(pod).env if e.name == addr)
            return str(self.ports.setdefault((pod.metadata.namespace, master), _free_port()))
        return re.sub(r"^(https?://)[a-z0-9.-]+\.svc(:\d+)", r"\g<1>127.0.0.1\g<2>", value)

    def _log(self, pod, proc: subprocess.Popen) -> None:
        """The container log, in the CRI format kwok serves (k8s/kwok ClusterLogs in conftest)."""
        path = self.log_dir / f"{pod.metadata.name}.log"
        with open(path, "a") as f:
            for line in proc.stdout:
                ts = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                f.write(f"{ts} stdout F {line.rstrip(chr(10))}\n")
                f.flush()

    def _report_exit(self, pod, code: int) -> None:
        container = _container(pod)
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{"name": container.name, "image": container.image, "imageID": "", "ready": False,
                                   "restartCount": 0, "state": {"terminated": {
                                       "exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                       "startedAt": _now(), "finishedAt": _now()}}}]}})

    def _terminate(self, pod) -> None:
        """SIGTERM to the container's main process; SIGKILL to all of it after the grace period; then remove."""
        proc = self.procs.get(pod.metadata.uid, (None, None))[1]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                # The deletion's own grace (0 for a forced delete), as a kubelet honours it.
                grace = pod.metadata.deletion_grace_period_seconds
                proc.wait(grace if grace is not None else (pod.spec.termination_grace_period_seconds or 30))
            except subprocess.TimeoutExpired:
                _kill_container(proc)
            self.exits.append((pod.metadata.name, proc.returncode))
        self._remove(pod)

    def _remove(self, pod) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                raise


def _container(pod):
    return next(c for c in pod.spec.containers if c.name in CONTAINERS)


def _field(pod, value_from) -> str | None:
    """An env value from the downward API: metadata.name/namespace/uid, or metadata.annotations['k']/labels['k']."""
    ref = value_from.field_ref if value_from is not None else None
    if ref is None:
        return None
    m = re.fullmatch(r"metadata\.(annotations|labels)\['(.+)'\]", ref.field_path)
    if m:
        return (getattr(pod.metadata, m.group(1)) or {}).get(m.group(2))
    return {"metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace,
            "metadata.uid": pod.metadata.uid}.get(ref.field_path)


def _kill_container(proc: subprocess.Popen) -> None:
    """SIGKILL the process and every descendant, as a kubelet ends a container's cgroup.

    Not only its process group: the supervisor starts torchrun in a session of its own.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo, tree = [proc.pid], []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _remap(value: str, mounts: dict[str, str]) -> str:
    for mount_path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return local + value[len(mount_path.rstrip("/")):]
    return value
