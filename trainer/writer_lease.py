"""The run folder's writer lease: a second live writer of a run folder refuses to start.

Node 0's supervisor holds `<run>/writer.json` (contract.WRITER_LEASE_NAME) while its run lives: the
job's identity (`holder`), the supervisor's host, PID, PID start time and PID namespace, this
start's `token`, and a heartbeat that moves every LEASE_PERIOD_S / 4. At start, before anything is
written into the folder, every node reads the lease and `decide`s:

    take over at once   no lease (or an unreadable one); the same holder (a restart or another node
                        of this job); a heartbeat older than LEASE_PERIOD_S; a holder on this machine
                        (same host and PID namespace) whose PID is gone or names another process
    refuse (exit 2)     another holder with a fresh heartbeat: one line naming it, nothing written

Rules: only node 0 writes the lease; every write replaces it whole; a taker writes, waits
SETTLE_S and reads it back, and refuses when another holder's record is there; a holder whose
heartbeat finds another's record SIGKILLs its ranks (no stop checkpoint) and exits 2; a clean end
removes the lease when it is still its own. The identity (`identity`): KUBETRAIN_WRITER_ID (`launch`
sets NAMESPACE/JOB), else the run id and the operator's master address, else this host, PID and
start time. Why identity rather than expiry alone, and what the races allow: docs/architecture.md,
"Decisions".

Standard library and trainer.storage only: it runs in the supervisor, PID 1 of a pod.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Callable, Mapping

from trainer import contract
from trainer.errors import one_line
from trainer.processes import is_running, pid_namespace, start_time
from trainer.storage import Storage, join

log = logging.getLogger("kubetrain.lease")

#: Seconds without a heartbeat after which another job may take the folder over. Long enough that a
#: storage brownout or a slow put does not lose it; a restart of the same job never waits for it.
LEASE_PERIOD_S = 60.0
#: The heartbeat's interval: a few per period, so one failed write does not lose the lease.
HEARTBEAT_S = LEASE_PERIOD_S / 4
#: How long a taker waits before it reads its own write back (see "Races" above).
SETTLE_S = 1.0
LEASE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Lease:
    """One writer's claim on a run folder, as `writer.json` records it."""

    holder: str
    host: str
    pid: int
    pid_start: int | None  # /proc/PID/stat's start time: a reused PID has a later one
    pid_ns: str  # PID namespace: a PID means something only inside it
    token: str
    started_at: float
    heartbeat_at: float

    def to_json(self) -> bytes:
        return (json.dumps({"format": LEASE_FORMAT, **dataclasses.asdict(self)}, indent=1, sort_keys=True)
                + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes | None) -> "Lease | None":
        """The record in `writer.json`; None for none, or one that is not a whole, valid record."""
        if raw is None:
            return None
        try:
            doc = json.loads(raw.decode())
            if not isinstance(doc, dict) or doc.get("format") != LEASE_FORMAT:
                return None
            lease = cls(**{f.name: doc[f.name] for f in dataclasses.fields(cls)})
            float(lease.heartbeat_at), float(lease.started_at), int(lease.pid)
        except (UnicodeDecodeError, ValueError, TypeError, KeyError):
            return None
        return lease


@dataclasses.dataclass(frozen=True)
class Decision:
    take: bool
    #: Why, in words that finish "taking over the writer lease: ..." or, refused, the one-line error.
    reason: str
    #: Worth a warning: the earlier holder is not known to be dead, it only stopped heartbeating.
    expired: bool = False


def same_machine(a: Lease, b: Lease) -> bool:
    """Whether b's PID can be looked up where a runs: one hostname and one PID namespace."""
    return a.host == b.host and a.pid_ns == b.pid_ns and a.pid_ns != "0"


def decide(current: Lease | None, me: Lease, *, now: float, period: float = LEASE_PERIOD_S,
           holder_alive: bool | None = None, run_uri: str = "") -> Decision:
    """Take the lease over or refuse to start (pure).

    `holder_alive`: whether `current`'s PID still names its process, looked up by the caller when
    `same_machine(me, current)`; None where nobody can tell (another machine).
    """
    if current is None:
        return Decision(True, "no live writer")
    if current.holder == me.holder:
        return Decision(True, f"it is held by this job ({me.holder}): a restart or another node of it")
    age = now - current.heartbeat_at
    if age > period:
        return Decision(True, f"its holder {current.holder} on {current.host} (pid {current.pid}) last "
                              f"heartbeat {age:.0f}s ago, over the {period:.0f}s lease", expired=True)
    if same_machine(me, current) and holder_alive is False:
        return Decision(True, f"its holder {current.holder} (pid {current.pid}) on this machine is gone")
    return Decision(False, f"run folder {run_uri} is being written by {current.holder} on {current.host} "
                           f"(pid {current.pid}, last heartbeat {max(age, 0):.0f}s ago): two writers would "
                           f"corrupt it; stop that run, or pass another --run-id")


def identity(env: Mapping[str, str], run_id: str, *, host: str, pid: int, pid_start: int | None) -> str:
    """Who writes: the same for every node and restart of one job, different for any other (see above)."""
    given = env.get(contract.ENV_WRITER_ID)
    if given:
        return given
    master = env.get("MASTER_ADDR") or env.get("PET_MASTER_ADDR")
    if master:
        return f"job {run_id} (rendezvous {master})"
    return f"local run {host}:{pid}:{pid_start}"


class WriterLease:
    """Node 0's hold on the run folder: acquire at start, heartbeat while the run lives, release at the end.

    Other nodes only `check` (read): they never write the lease, and they share node 0's holder.
    """

    def __init__(self, storage: Storage, run_uri: str, me: Lease, *, period: float = LEASE_PERIOD_S,
                 settle: float = SETTLE_S, heartbeat: float = HEARTBEAT_S) -> None:
        self.storage, self.run_uri, self.me = storage, run_uri, me
        self.path = join(run_uri, contract.WRITER_LEASE_NAME)
        self.period, self.settle, self.heartbeat = period, settle, heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False

    @classmethod
    def for_run(cls, storage: Storage, run_id: str, env: Mapping[str, str]) -> "WriterLease":
        pid, host = os.getpid(), socket.gethostname()
        pid_start = start_time(pid)
        now = time.time()
        me = Lease(holder=identity(env, run_id, host=host, pid=pid, pid_start=pid_start), host=host, pid=pid,
                   pid_start=pid_start, pid_ns=pid_namespace(), token=secrets.token_hex(8), started_at=now,
                   heartbeat_at=now)
        return cls(storage, join(storage.uri, run_id), me)

    def read(self) -> Lease | None:
        return Lease.from_json(self.storage.read_small(self.path))

    def check(self, now: float | None = None) -> Decision:
        """Whether this start may write the run folder, from the lease as it is (reads only)."""
        current = self.read()
        alive = None
        if current is not None and same_machine(self.me, current):
            alive = is_running(current.pid, current.pid_start)
        return decide(current, self.me, now=time.time() if now is None else now, period=self.period,
                      holder_alive=alive, run_uri=self.run_uri)

    def acquire(self) -> Decision:
        """Check, write this start's record, wait SETTLE_S and read it back; refused when another job's won."""
        decision = self.check()
        if not decision.take:
            return decision
        if decision.expired:
            log.warning("taking over the run folder's writer lease: %s", decision.reason)
        self._write(time.time())
        self._stop.wait(self.settle)
        back = self.read()
        if back is not None and back.token != self.me.token and back.holder != self.me.holder:
            # Another start's write landed after ours: it holds the folder, and ours is gone.
            return decide(back, self.me, now=time.time(), period=self.period, holder_alive=True,
                          run_uri=self.run_uri)
        self._held = True
        return decision

    def start_heartbeat(self, on_lost: Callable[[str], None]) -> None:
        """Move the heartbeat every HEARTBEAT_S; call `on_lost(message)` once if another job took the folder."""
        if not self._held:
            return
        self._thread = threading.Thread(target=self._beat, args=(on_lost,), name="kubetrain-lease", daemon=True)
        self._thread.start()

    def _beat(self, on_lost: Callable[[str], None]) -> None:
        failing = False
        while not self._stop.wait(self.heartbeat):
            try:
                current = self.read()
                if current is not None and current.token != self.me.token and current.holder != self.me.holder:
                    self._held = False
                    on_lost(f"another run took over the run folder {self.run_uri}: {current.holder} on "
                            f"{current.host} (pid {current.pid}) holds its writer lease; two writers would "
                            f"corrupt it, so this one stops")
                    return
                self._write(time.time())
                if failing:
                    log.info("writer lease: heartbeat written again")
                failing = False
            except Exception as e:  # retried at the next beat; a few misses fit in one period
                if not failing:
                    log.warning("writer lease: could not write the heartbeat (%s); retrying every %.0fs",
                                one_line(str(e)), self.heartbeat)
                failing = True

    def _write(self, now: float) -> None:
        data = dataclasses.replace(self.me, heartbeat_at=now).to_json()
        try:
            self.storage.write_small(self.path, data)
        except FileNotFoundError:
            # On a folder, rank 0's commit sweeps the run folder's `*.tmp-*` leftovers and may take
            # our temp file between its write and its rename: once more is enough.
            self.storage.write_small(self.path, data)

    def release(self, timeout: float = 10.0) -> None:
        """Stop the heartbeat and remove the lease while it is still this start's, within `timeout` seconds
        (a store that does not answer must not hold the exit past the grace period); never fails the run.
        A lease left behind is this start's own: its job's next start, or any on this machine, takes it over."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout / 2)
        if not self._held:
            return
        self._held = False

        def remove() -> None:
            try:
                current = self.read()
                if current is not None and current.token == self.me.token:
                    self.storage.remove(self.path)
            except Exception as e:
                log.warning("writer lease: could not remove %s (%s); the next start takes it over", self.path,
                            one_line(str(e)))

        end = threading.Thread(target=remove, name="kubetrain-lease-end", daemon=True)
        end.start()
        end.join(max(deadline - time.monotonic(), 0.0))
