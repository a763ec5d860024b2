"""The restart ledger's I/O: one object per start of the run, in `<run>/attempts/`.

The format and every rule over it (what ended how, whether the crash-loop budget is spent,
incidents and goodput) are pure functions in trainer.contract, which the launcher reads too.
This module only reads and writes: the supervisor opens a `Ledger` before torchrun starts,
tells it about commits and stop requests while the ranks run, and closes it with the exit code.

Writes never block the supervisor's loop: a background thread writes the newest state of this
attempt's record (each write replaces the whole object, atomically, as `latest` is written), and
only this process writes it. A storage error makes the ledger log once and stand aside; the run
itself never fails for its bookkeeping, except that a bucket the store refuses is the same
configuration error restore would meet (exit 2).

Imports no torch: it runs in the supervisor, PID 1 of a pod.
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

from trainer import contract
from trainer.contract import Attempt
from trainer.errors import StorageConfigError, one_line
from trainer.storage import Storage, join, open_storage

log = logging.getLogger("kubetrain.ledger")

#: How often a node other than 0 looks for node 0's crash-loop verdict while its ranks wait to start.
VERDICT_POLL_S = 2.0


@dataclasses.dataclass(frozen=True)
class CrashLoopVerdict:
    """The run is stopped for good: the message lists the attempts and their causes."""

    message: str


class Ledger:
    def __init__(self, storage: Storage, run_uri: str, node_rank: int, max_restarts: int | None) -> None:
        self.storage, self.run_uri = storage, run_uri
        self.dir = join(run_uri, contract.ATTEMPTS_DIR)
        self.node_rank, self.max_restarts = node_rank, max_restarts
        self.record: Attempt | None = None
        self.previous: list[Attempt] = []  # node 0: its earlier attempts the budget needs, oldest first
        self._lock = threading.Lock()  # the record
        self._io = threading.Lock()  # one write at a time, so an older state never lands after a newer one
        self._dirty = threading.Event()
        self._version = self._flushed = 0
        self._broken = False
        self._closed = False
        self._writer: threading.Thread | None = None

    @classmethod
    def open(cls, uri: str, run_id: str, node_rank: int, max_restarts: int | None) -> "Ledger":
        storage = open_storage(uri)
        return cls(storage, join(storage.uri, run_id), node_rank, max_restarts)

    # --- start ---------------------------------------------------------------------------

    def begin(self, now: float | None = None) -> CrashLoopVerdict | None:
        """Record this start; a CrashLoopVerdict when the run must not start (the budget is spent).

        StorageConfigError propagates (exit 2); any other error leaves the ledger off for this attempt.
        """
        try:
            return self._begin(time.time() if now is None else now)
        except StorageConfigError:
            raise
        except Exception as e:
            self._broken = True
            log.warning("restart ledger unavailable (%s): this start is not recorded and the crash-loop budget is "
                        "not checked", one_line(str(e)))
            return None

    def _begin(self, now: float) -> CrashLoopVerdict | None:
        from trainer.checkpoint.layout import parse_latest  # no torch

        verdict = self.read_verdict()
        latest = parse_latest(self.storage.read_small(join(self.run_uri, contract.LATEST_NAME)))
        names = sorted(n for n in self.storage.list_names(self.dir) if contract.parse_attempt_name(n))
        mine = [n for n in names if contract.parse_attempt_name(n)[1] == self.node_rank]
        previous = None
        if self.node_rank == 0:
            self.previous = self._read_back(mine, latest)
            prev = self.previous[-1] if self.previous else None
        else:
            prev = self._read(mine[-1]) if mine else None
        if prev is not None:
            _, code, cause = contract.attempt_end(prev, _Started(resumed_from=latest))  # type: ignore[arg-type]
            previous = {"attempt": prev.name, "code": code, "cause": cause}
        self.record = Attempt(name=contract.attempt_name(now, self.node_rank, secrets.token_hex(4)),
                              node_rank=self.node_rank, started_at=now, resumed_from=latest,
                              host=socket.gethostname(), pid=os.getpid(), previous=previous)
        if verdict is not None:
            self.record = dataclasses.replace(self.record, ended_at=now, code=int(contract.ExitCode.CRASH_LOOP),
                                              cause=verdict.message)
        self._write_now()
        if previous is not None:
            log.info("attempt %s resumes %s; the previous one ended: %s", self.record.name,
                     "without a checkpoint" if latest is None else f"from step {latest}",
                     f"exit {previous['code']} ({previous['cause']})" if previous["code"] is not None
                     else previous["cause"])
        if verdict is not None:
            return verdict
        if self.node_rank == 0:
            failed = contract.crash_loop(self.previous + [self.record], self.max_restarts)
            if failed:
                return self._stop(failed, now)
        self._writer = threading.Thread(target=self._write_loop, name="kubetrain-ledger", daemon=True)
        self._writer.start()
        return None

    def _read_back(self, names: list[str], latest: int | None) -> list[Attempt]:
        """Node 0's earlier attempts, newest first until one committed a step or finished, or enough
        failed to spend the budget in any case; returned oldest first."""
        out: list[Attempt] = []
        following: Attempt | _Started = _Started(resumed_from=latest)  # this start
        limit = (self.max_restarts if self.max_restarts is not None else 0) + 1
        failed = 0
        for name in reversed(names):
            a = self._read(name)
            if a is None:
                continue  # a broken record: as if absent
            out.append(a)
            kind, _, _ = contract.attempt_end(a, following)  # type: ignore[arg-type]
            if kind == "finished" or contract.made_progress(a, following):  # type: ignore[arg-type]
                break
            failed += kind == "failed"
            if failed >= limit:
                break
            following = a
        return out[::-1]

    def _read(self, name: str) -> Attempt | None:
        return Attempt.from_json(name, self.storage.read_small(join(self.dir, name)))

    def history(self, limit: int) -> list[Attempt]:
        """This node's newest `limit` earlier attempts (not this one), oldest first: goodput and restarts
        need more than `previous` keeps. Storage I/O: call it off the supervisor's loop."""
        mine = sorted(n for n in self.storage.list_names(self.dir)
                      if (parsed := contract.parse_attempt_name(n)) and parsed[1] == self.node_rank
                      and (self.record is None or n.rsplit("/", 1)[-1] != self.record.name))[-limit:]
        objects = {n: self.storage.read_small(join(self.dir, n.rsplit("/", 1)[-1])) for n in mine}
        return contract.parse_ledger(objects)

    # --- the verdict ------------------------------------------------------------------------

    def read_verdict(self) -> CrashLoopVerdict | None:
        raw = self.storage.read_small(join(self.dir, contract.CRASH_LOOP_NAME))
        if raw is None:
            return None
        try:
            message = json.loads(raw.decode())["message"]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            message = "crash loop (the verdict is unreadable)"
        return CrashLoopVerdict(f"{message}; to run it again, remove {self.dir}/ or use another --run-id")

    def _stop(self, failed: list[Attempt], now: float) -> CrashLoopVerdict:
        series = self.previous + ([self.record] if self.record is not None else [])
        message = contract.crash_loop_message(failed, series, int(self.max_restarts or 0))
        doc = {"format": contract.LEDGER_FORMAT, "decided_at": now, "node_rank": self.node_rank,
               "max_restarts": self.max_restarts, "attempts": [a.name for a in failed], "message": message}
        self.storage.write_small(join(self.dir, contract.CRASH_LOOP_NAME), (json.dumps(doc, indent=1) + "\n").encode())
        return CrashLoopVerdict(message)

    # --- while the ranks run ----------------------------------------------------------------

    def update(self, **changes) -> None:
        """Change this attempt's record; the background thread writes it soon."""
        if self.record is None or self._broken:
            return
        with self._lock:
            self.record = dataclasses.replace(self.record, **changes)
            self._version += 1
        self._dirty.set()

    def _write_loop(self) -> None:
        while not self._closed:
            self._dirty.wait()
            self._dirty.clear()
            self._flush_once()

    def _flush_once(self) -> None:
        with self._io:
            with self._lock:
                record, version = self.record, self._version
            if version <= self._flushed or record is None:
                return
            try:
                self.storage.write_small(join(self.dir, record.name), record.to_json())
            except Exception as e:
                log.warning("restart ledger: could not record %s (%s)", record.name, one_line(str(e)))
                return
            self._flushed = version

    def _write_now(self) -> None:
        assert self.record is not None
        self.storage.write_small(join(self.dir, self.record.name), self.record.to_json())

    # --- the end ----------------------------------------------------------------------------

    def finish(self, code: int, cause: str, *, last_step: int | None, timeout: float) -> CrashLoopVerdict | None:
        """Record how this attempt ended (within `timeout` seconds); node 0 judges the budget first.

        A CrashLoopVerdict when this failure spent the budget: the supervisor then exits CRASH_LOOP, and
        this record says so (with the failure in its cause)."""
        if self.record is None or self._broken:
            return None
        now = time.time()
        verdict = None
        with self._lock:
            self.record = dataclasses.replace(self.record, ended_at=now, code=int(code), cause=cause,
                                              last_step=last_step)
        if (self.node_rank == 0 and contract.is_retryable(code)
                and contract.attempt_end(self.record, None)[0] == "failed"
                and not contract.made_progress(self.record, None)):
            failed = contract.crash_loop(self.previous + [self.record], self.max_restarts)
            if failed:
                try:
                    verdict = self._stop(failed, now)
                except Exception as e:
                    log.warning("restart ledger: could not record the crash-loop verdict (%s); exiting %d anyway",
                                one_line(str(e)), code)
                    return None
                with self._lock:
                    self.record = dataclasses.replace(self.record, code=int(contract.ExitCode.CRASH_LOOP),
                                                      cause=f"{verdict.message} (this attempt: exit {code}, {cause})")
        self.update()
        self._closed = True
        self._dirty.set()  # the writer loop ends
        end = threading.Thread(target=self._flush_once, name="kubetrain-ledger-end", daemon=True)
        end.start()
        end.join(timeout)
        if self._flushed < self._version:
            log.warning("restart ledger: the end of %s was not recorded within %.1fs", self.record.name, timeout)
        return verdict

    def begin_in_place(self, now: float | None = None) -> None:
        """After finish(): record the next attempt of this same supervisor, an in-place restart.

        Node 0 keeps the attempt that ended among its earlier ones, so the crash-loop rule counts it as
        it counts a replaced pod's. A storage error leaves the ledger off for the rest of this process.
        """
        if self.record is None or self._broken:
            return
        from trainer.checkpoint.layout import parse_latest  # no torch

        now = time.time() if now is None else now
        ended = self.record
        try:
            latest = parse_latest(self.storage.read_small(join(self.run_uri, contract.LATEST_NAME)))
        except Exception as e:
            self._broken = True
            log.warning("restart ledger unavailable (%s): this restart in place is not recorded", one_line(str(e)))
            return
        if self.node_rank == 0:
            self.previous.append(ended)
        _, code, cause = contract.attempt_end(ended, _Started(resumed_from=latest))  # type: ignore[arg-type]
        if self._writer is not None:  # finish() closed it: one writer at a time
            self._writer.join(10.0)
        with self._lock:
            self.record = Attempt(name=contract.attempt_name(now, self.node_rank, secrets.token_hex(4)),
                                  node_rank=self.node_rank, started_at=now, resumed_from=latest,
                                  host=socket.gethostname(), pid=os.getpid(),
                                  previous={"attempt": ended.name, "code": code, "cause": cause}, in_place=True)
            self._version += 1
            self._closed = False
        self._dirty.set()
        self._writer = threading.Thread(target=self._write_loop, name="kubetrain-ledger", daemon=True)
        self._writer.start()
        log.info("attempt %s (in place) resumes %s; the previous one ended: exit %s (%s)", self.record.name,
                 "without a checkpoint" if latest is None else f"from step {latest}", code, cause)

    def watch_verdict(self, on_verdict, until: threading.Event) -> None:
        """Nodes other than 0: poll node 0's verdict until `until` is set (their ranks started training)."""
        if self.node_rank == 0 or self._broken:
            return

        def poll() -> None:
            while not until.wait(VERDICT_POLL_S):
                try:
                    verdict = self.read_verdict()
                except Exception:
                    continue
                if verdict is not None:
                    on_verdict(verdict)
                    return

        threading.Thread(target=poll, name="kubetrain-verdict", daemon=True).start()


@dataclasses.dataclass(frozen=True)
class _Started:
    """Stands for 'a later start exists' where only its resumed_from matters."""

    resumed_from: int | None
    started_at: float = 0.0

