"""What /metrics reads from the restart ledger (pure): restarts by cause, the budget left, goodput.

The rules are the ledger's own (trainer/contract/ledger.py); this only counts with them.
"""

from __future__ import annotations

import collections
from typing import Sequence

from trainer.contract import Attempt, ExitCode, attempt_end, made_progress, summarize_ledger

#: The `cause` label: a small fixed set, so a series per cause stays bounded (the ledger's own
#: cause is free text: a Kueue message, a crash-loop verdict).
CAUSES = ("preempted", "error", "killed", "hang", "infra", "crash_loop", "unknown")


def cause_of(kind: str, code: int | None) -> str:
    """The `cause` label of an attempt that ended as attempt_end says."""
    if kind == "preempted":
        return "preempted"
    if code is None:
        return "unknown"  # no end recorded: SIGKILLed, OOM-killed, the node lost
    if code == ExitCode.HANG:
        return "hang"
    if code == ExitCode.INFRA:
        return "infra"
    if code == ExitCode.CRASH_LOOP:
        return "crash_loop"
    return "killed" if code > 128 else "error"


def restarts_by_cause(series: Sequence[Attempt]) -> dict[tuple[str, str], int]:
    """{(cause, exit code or ""): n} of the attempts in one node's series (oldest first) that a later
    start followed: each is one restart. A finished attempt is not one."""
    out: collections.Counter[tuple[str, str]] = collections.Counter()
    for a, following in zip(series, series[1:]):
        kind, code, _ = attempt_end(a, following)
        if kind in ("preempted", "failed"):
            out[(cause_of(kind, code), "" if code is None else str(code))] += 1
    return dict(out)


def budget_left(series: Sequence[Attempt], max_restarts: int | None) -> int | None:
    """Restarts left before the crash-loop stop (exit 99): max_restarts less the failed attempts in a row
    since the last one that committed a new step, counted as contract.crash_loop counts them. None: no budget."""
    if max_restarts is None:
        return None
    failed = 0
    for i in range(len(series) - 1, -1, -1):
        a, following = series[i], series[i + 1] if i + 1 < len(series) else None
        kind, _, _ = attempt_end(a, following)
        if kind == "finished" or made_progress(a, following):
            break
        failed += kind == "failed"
    return max(0, max_restarts - failed)


def goodput(series: Sequence[Attempt], now: float) -> float | None:
    """The ledger's goodput of one node's series (summarize_ledger's rule), or None without attempts."""
    if not series:
        return None
    return summarize_ledger(series, now, node_rank=series[0].node_rank).goodput
