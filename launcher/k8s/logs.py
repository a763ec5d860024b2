"""`launch logs`: every pod's log, merged with a replica prefix, one thread per pod.

With --follow, new pods are picked up as the operator creates them, pending ones are
waited for (saying why), and once the job has finished the streams are drained and closed.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import Any, Callable, Iterator

from launcher import backends
from launcher.errors import ClusterError, one_line
from launcher.k8s.api import CONNECT_TIMEOUT, Api, call, raw
from launcher.k8s.jobs import get_job, job_pods, pod_container, replica_id, state
from launcher.k8s.status import job_events
from launcher.records import create_failures, describe_pod, event_record, pod_problem


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


def _waiting_for(pod: dict) -> str:
    """What a pending pod (its JSON) waits for, in a few words."""
    return pod_problem(describe_pod(pod)) or "to be scheduled and started"


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
    prefix = f"[{replica_id(pod)}] "
    name = pod.metadata.name
    said = None
    while follow and not shared.drained.is_set():  # a Pending pod has no log yet: wait for it rather than return
        p = call(f"reading pod {name}", lambda: raw(api.core.read_namespaced_pod(name, ns, _preload_content=False)),
                  missing_ok=True)
        if p is None or (p.get("status") or {}).get("phase") not in ("Pending", None):
            break
        waiting = _waiting_for(p)
        if waiting != said:
            with shared.lock:
                print(f"launch: {replica_id(p)} is Pending, waiting for it: {waiting}", file=sys.stderr, flush=True)
            said = waiting
        time.sleep(2)
    # Following: a time limit to connect only; the stream may rightly be quiet for a long time.
    stream = call(f"reading logs of {name}", lambda: api.core.read_namespaced_pod_log(
        name, ns, container=pod_container(pod), follow=follow, _preload_content=False,
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


def stream_logs(api: Api, ns: str, name: str, *, follow: bool,
                kueue_waiting: Callable[[Api, str, dict], str | None] = lambda api, ns, job: None) -> int:
    """Every pod's log, merged with a replica prefix; with follow, new pods are picked up as they appear.

    kueue_waiting(api, ns, job): what a job behind Kueue waits for while not admitted (None: nothing)."""
    job = get_job(api, ns, name)
    shared = _Streams()
    seen: set[str] = set()
    threads: list[threading.Thread] = []
    said = None
    while True:
        pods = job_pods(api, ns, name, job["metadata"].get("uid"), backends.of(job))
        if follow and not pods:  # the operator has not created any pod (yet): say why we wait
            queued = kueue_waiting(api, ns, job)
            if queued is not None:  # suspended by Kueue: what it waits for is admission, not the operator
                waiting = f"launch: {ns}/{name} is {queued}"
            else:
                failures = create_failures([event_record(e) for e in job_events(api, ns, job)])
                waiting = f"launch: {ns}/{name} has no pods yet, waiting for " + (
                    f"the operator cannot create its pods: {failures[0]}" if failures
                    else "the training operator to create its pods")
            if waiting != said:
                print(waiting, file=sys.stderr, flush=True)
                said = waiting
        for pod in pods:
            if pod.metadata.uid not in seen:
                seen.add(pod.metadata.uid)
                t = threading.Thread(target=_stream_pod, args=(api, ns, pod, follow, shared), daemon=True)
                t.start()
                threads.append(t)
        if not follow:
            break
        job = get_job(api, ns, name)  # read again: Kueue's labels and the state change while we follow
        if state(job) in backends.FINISHED:
            shared.drain(threads)
            break
        time.sleep(2)
    for t in threads:
        t.join()
    for error in shared.errors:
        print(f"launch: error: {one_line(error)}", file=sys.stderr)
    return 1 if shared.errors else 0
