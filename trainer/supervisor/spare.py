"""A warm spare: the next in-place restart's torchrun, started while the current attempt trains.

An in-place restart used to pay a new torchrun's torch import and then its ranks' (two Pythons
importing torch, one after the other: most of the restart, BENCHMARKS.md). A spare is started once
this attempt's ranks have trained for SPARE_AFTER_TRAINING_S, imports torch, starts a forkserver that
imports it too, and waits. The restart hands it its arguments and its ranks are forked warm
(trainer/torchrun_main.py standby(), trainer/warm_rank.py). Its environment is the next attempt's,
fixed when it starts: an in-place restart's ranks get no prefetch folder, the rest does not change.
The price: two idle processes with torch imported (about 1.2 GB RSS here, much of it torch's shared
libraries) while in-place restarts are left in the budget.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Mapping

from trainer.control_folder import SpareReady
from trainer.processes import descendants, parent_map
from trainer.torchrun_main import STANDBY


#: How long an attempt's ranks train before its spare starts. Not at once: a start is when the CPUs are
#: busiest (the ranks' own imports, data loading, compilation), and the spare's two imports of torch
#: (several CPU-seconds) would slow it; an attempt that ends sooner restarts cold, as without a spare.
SPARE_AFTER_TRAINING_S = 30.0


class Spare:
    def __init__(self, env: Mapping[str, str], control: str) -> None:
        self.env = dict(env)  # what its ranks will see: the attempt it starts must want the same
        self.control = control
        self.warm_after: float | None = None  # seconds it took to import, once it said so
        SpareReady.clear(control)  # an earlier spare's
        # Own session, as a torchrun the supervisor starts: its group is what the supervisor kills.
        self.proc = subprocess.Popen([sys.executable, "-m", "trainer.torchrun_main", STANDBY], env=self.env,
                                     stdin=subprocess.PIPE, text=True, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def became_warm(self) -> bool:
        """True once, when the spare has reported that it and its forkserver have torch imported."""
        if self.warm_after is not None:
            return False
        ready = SpareReady.read(self.control)
        if ready is None or ready.pid != self.proc.pid:
            return False
        self.warm_after = ready.seconds
        return True

    def activate(self, argv: list[str]) -> subprocess.Popen:
        """Hand the spare torchrun's arguments; it is then the attempt's torchrun process."""
        assert self.proc.stdin is not None
        SpareReady.clear(self.control)
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.close()
        return self.proc

    def discard(self) -> None:
        """End an unused spare and what it started (its forkserver, multiprocessing's resource tracker:
        one process group), and reap them: orphaned, they are the supervisor's (a subreaper) to reap."""
        SpareReady.clear(self.control)
        below = set(descendants(self.proc.pid, parent_map()))
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        deadline = time.monotonic() + 2.0
        while below and time.monotonic() < deadline:
            for pid in list(below):
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        below.discard(pid)
                except ChildProcessError:  # not (yet) re-parented to us, or gone
                    if not os.path.exists(f"/proc/{pid}"):
                        below.discard(pid)
            time.sleep(0.02)
