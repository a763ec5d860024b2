"""What a rank tells its supervisor through the control folder (trainer/control_folder.py).

Without a supervisor (no KUBETRAIN_CONTROL_DIR) every notice is a no-op.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from trainer.control_folder import CheckpointEvent, Committed, Preempted, Progress, RankStats, TotalSteps
from trainer.storage import error_counts

log = logging.getLogger("kubetrain.checkpoint")

#: Rate limit of the heartbeat: the watchdog and `launch chaos` only need second resolution,
#: and a step may be milliseconds: one small write per interval.
HEARTBEAT_EVERY_S = 0.25


class SupervisorNotices:
    def __init__(self, control_dir: str | None, rank: int) -> None:
        self.dir = control_dir
        self._rank = rank
        self._last_heartbeat = 0.0
        # /metrics' record (RankStats): written from the training thread and the upload thread.
        self._stats_lock = threading.Lock()
        self._events: collections.deque[CheckpointEvent] = collections.deque(maxlen=RankStats.KEEP)
        self._errors_written: dict[str, int] = {}

    def heartbeat(self, step: int, force: bool = False) -> None:
        """This rank finished `step` (the watchdog's and `launch chaos`'s progress mark), rate-limited."""
        if self.dir is None:
            return
        now = time.time()
        if not force and now - self._last_heartbeat < HEARTBEAT_EVERY_S:
            return
        self._last_heartbeat = now
        Progress(self._rank, step, now).write(self.dir)
        if error_counts.counts() != self._errors_written:
            self._write_stats()

    def committed(self, step: int) -> None:
        """Global rank 0 tells its supervisor, which moves the restart ledger's progress mark."""
        if self.dir is None:
            return
        try:
            Committed(step, time.time()).write(self.dir)
        except OSError as e:  # bookkeeping only: never fail a committed checkpoint for it
            log.warning("could not tell the supervisor about the commit of step %d: %s", step, e)

    def total_steps(self, steps: int) -> None:
        """Global rank 0: the run's declared length, for the TrainJob status (progress, ETA). Never raises."""
        if self.dir is None:
            return
        try:
            TotalSteps(steps).write(self.dir)
        except OSError as e:
            log.warning("could not tell the supervisor the run's total steps: %s", e)

    def preempted(self, step: int) -> None:
        """Each node's first rank: the stop checkpoint committed, so the supervisor exits 143, not 0."""
        if self.dir is not None:
            Preempted(step, time.time()).write(self.dir)

    def checkpoint_event(self, kind: str, step: int | None, **measured) -> None:
        """A save (every rank, with its outcome) or a restore ended: /metrics counts it. Never raises."""
        if self.dir is None:
            return
        with self._stats_lock:
            seq = self._events[-1].seq + 1 if self._events else 1
            self._events.append(CheckpointEvent(seq=seq, kind=kind, step=step, time=time.time(), **measured))
        self._write_stats()

    def _write_stats(self) -> None:
        try:
            with self._stats_lock:
                errors = error_counts.counts()
                RankStats(self._rank, tuple(self._events), errors).write(self.dir)
                self._errors_written = errors
        except Exception as e:  # noqa: BLE001 - metrics only: training goes on
            log.debug("rank %d: could not write its stats for /metrics: %s", self._rank, e)

