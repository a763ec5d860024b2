"""The ranks' stop agreement: when a stop was requested on any rank, every rank stops at the same step.

A stop request is SIGTERM to a rank or the supervisor's StopRequest (trainer/control_folder.py). The ranks
learn of one in a max all-reduce that step_end starts at one agreeing step and reads at the next, so
its latency hides behind training steps; it also carries the time cadence and each rank's proposed
stride, and since every rank reads the same max at the same call, they keep agreeing at the same calls.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from trainer import dist
from trainer.control_folder import StopRequest

#: The ranks' stop/save agreement (one all-reduce) runs every few steps when steps are short:
#: at most every AGREE_MAX_STEPS steps, and no more steps than fit in AGREE_WITHIN_S. Every
#: step, step_end cost 0.18-0.29 ms (mean) of a 7.5 ms CPU step, 3-4 %; every 4th, 0.06-0.10 ms
#: (2 gloo ranks, timed in-process, BENCHMARKS.md M7). A stop then waits at most two strides:
#: 2 x AGREE_WITHIN_S of the steps the stride was chosen for, 8 steps at most.
AGREE_WITHIN_S = 0.05
AGREE_MAX_STEPS = 4


def agreement_stride(slowest_step_s: float) -> int:
    """Steps until the next agreement, given this rank's slowest step since the last one (0: unknown)."""
    if slowest_step_s <= 0:
        return 1
    return max(1, min(AGREE_MAX_STEPS, int(AGREE_WITHIN_S / slowest_step_s)))


class StopAgreement:
    """This rank's side of the agreement on the control group; every rank makes the same calls."""

    def __init__(self, group: Any, control_dir: str | None) -> None:
        self._group = group
        self._control_dir = control_dir
        self._signalled = threading.Event()
        self._install_signal_handlers()
        #: The agreement started at the last agreeing tick, read at the next.
        self._pending: dist.PendingMax | None = None
        #: tick calls so far, and the call at which the next agreement starts: the same on every
        #: rank, as every rank makes the same calls and reads the same agreed strides.
        self._ticks = 0
        self._next = 0
        self._last_tick: float | None = None
        self._slowest_step = 0.0  # since the last agreement started, on this rank

    @property
    def stop_requested(self) -> bool:
        """Whether this rank has seen a stop request (SIGTERM or the supervisor's notice)."""
        return self._signalled.is_set() or (
            self._control_dir is not None and StopRequest.exists(self._control_dir))

    def tick(self, now: float, time_due: bool) -> tuple[int, int]:
        """(stop, save due) as agreed by every rank; both 0 between agreements.

        The ranks agree on stopping one agreement late: the max started here is read at the
        next one. Waiting for it here cost 12 % of a 10 ms step (bench M7, 2 gloo ranks).
        """
        if self._last_tick is not None:
            self._slowest_step = max(self._slowest_step, now - self._last_tick)
        self._last_tick = now
        stop = due = 0
        if self._ticks >= self._next:
            proposal = agreement_stride(self._slowest_step)
            self._slowest_step = 0.0
            agreed, self._pending = self._pending, dist.PendingMax(
                [int(self.stop_requested), int(time_due), proposal], self._group)
            stop, due, stride = agreed.result() if agreed is not None else (0, 0, 1)
            self._next = self._ticks + stride
        self._ticks += 1
        return stop, due

    def drain(self) -> None:
        """Finish the collective a tick started, so the control group is free (every rank has one)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, frame: Any) -> None:
            # Only set a flag: raising here could interrupt a collective or an upload.
            self._signalled.set()

        signal.signal(signal.SIGTERM, on_signal)
