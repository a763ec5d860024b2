"""The workers' side of the pod's control files (contract.CONTROL_*): what a rank tells its supervisor.

All of them are local files in KUBETRAIN_CONTROL_DIR, each replaced whole (write a temp, rename),
so the supervisor never reads half of one. Without a supervisor (no control dir) they are no-ops.
"""

from __future__ import annotations

import json
import logging
import os
import time

from trainer import contract

log = logging.getLogger("kubetrain.checkpoint")

#: Rate limit of the watchdog heartbeat file: it only needs second resolution.
HEARTBEAT_EVERY_S = 0.25  # progress files for the watchdog and `launch chaos`: one small write per interval


class ControlFiles:
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
        _replace(os.path.join(self.dir, f"{contract.CONTROL_PROGRESS_PREFIX}{self._rank}"), f"{step} {now}\n")

    def committed(self, step: int) -> None:
        """Global rank 0 tells its supervisor, which moves the restart ledger's progress mark."""
        if self.dir is None:
            return
        try:
            _replace(os.path.join(self.dir, contract.CONTROL_COMMITTED), f"{step} {time.time()}\n")
        except OSError as e:  # bookkeeping only: never fail a committed checkpoint for it
            log.warning("could not tell the supervisor about the commit of step %d: %s", step, e)

    def preempted(self, step: int) -> None:
        """Each node's first rank: the stop checkpoint committed, so the supervisor exits 143, not 0."""
        if self.dir is not None:
            with open(os.path.join(self.dir, contract.CONTROL_PREEMPTED), "w") as f:
                json.dump({"step": step, "time": time.time()}, f)


def _replace(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
