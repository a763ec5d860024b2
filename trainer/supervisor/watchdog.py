"""The hang watchdog's rule: which ranks made no step progress for too long (pure)."""

from __future__ import annotations

from typing import Mapping

from trainer.control_folder import Progress


def stalled_ranks(progress: Mapping[int, Progress], expected_ranks: list[int], *, now: float,
                  timeout: float) -> dict[int, tuple[int | None, float]]:
    """Ranks whose last step ended more than `timeout` ago: {rank: (last step or None, seconds)}.

    Only once some rank has reported progress: a script that does not use the
    checkpoint API never reports, and the watchdog cannot judge it. A rank yet to
    report is judged from the first report of any rank, not from the start: a
    start slower than the timeout (imports on a busy machine) flagged the rank
    that happened to report a moment after its peer.
    """
    if timeout <= 0 or not progress:
        return {}
    first = min(p.time for p in progress.values())
    out: dict[int, tuple[int | None, float]] = {}
    for r in expected_ranks:
        p = progress.get(r)
        step, at = (p.step, p.time) if p is not None else (None, first)
        if now - at > timeout:
            out[r] = (step, now - at)
    return out


def describe_stall(stalled: Mapping[int, tuple[int | None, float]], timeout: float) -> str:
    """The watchdog's one line: how long, and each stalled rank's last step and age."""
    return "no step progress for %.0fs on %s" % (timeout, ", ".join(
        f"rank {r} (last step {s if s is not None else 'none'}, {age:.0f}s ago)"
        for r, (s, age) in sorted(stalled.items())))
