"""What a rank tells its supervisor through the control folder (trainer/control_folder.py).

Without a supervisor (no KUBETRAIN_CONTROL_DIR) every notice is a no-op.
"""

from __future__ import annotations

import logging
import time

from trainer.control_folder import Committed, Preempted, Progress

log = logging.getLogger("kubetrain.checkpoint")

#: Rate limit of the heartbeat: the watchdog and `launch chaos` only need second resolution,
#: and a step may be milliseconds: one small write per interval.
HEARTBEAT_EVERY_S = 0.25


class SupervisorNotices:
    def __init__(self, control_dir: str | None, rank: int) -> None:
        self.dir = control_dir
        self._rank = rank
        self._last_heartbeat = 0.0

    def heartbeat(self, step: int, force: bool = False) -> None:
        """This rank finished `step` (the watchdog's and `launch chaos`'s progress mark), rate-limited."""
        if self.dir is None:
            return
        now = time.time()
        if not force and now - self._last_heartbeat < HEARTBEAT_EVERY_S:
            return
        self._last_heartbeat = now
        Progress(self._rank, step, now).write(self.dir)

    def committed(self, step: int) -> None:
        """Global rank 0 tells its supervisor, which moves the restart ledger's progress mark."""
        if self.dir is None:
            return
        try:
            Committed(step, time.time()).write(self.dir)
        except OSError as e:  # bookkeeping only: never fail a committed checkpoint for it
            log.warning("could not tell the supervisor about the commit of step %d: %s", step, e)

    def preempted(self, step: int) -> None:
        """Each node's first rank: the stop checkpoint committed, so the supervisor exits 143, not 0."""
        if self.dir is not None:
            Preempted(step, time.time()).write(self.dir)
