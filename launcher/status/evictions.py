"""Kueue's evictions of a job matched to the restart ledger's attempts they ended (pure).

A Kueue preemption reaches the runtime as a bare SIGTERM (Kueue suspends the job, the operator
deletes its pods): the attempt commits a checkpoint and exits 143. The ledger alone cannot say
who sent it; the Workload can. Each eviction Kueue recorded (launcher/status/admission.py, from
the Workload's conditions and events, never guessed from the pods) is matched to the attempt of
node rank 0 that was running when it happened and ended soonest after it, with exit 143 (or
killed while stopping). A job suspended by Kueue is not restarted by its operator: no retry is
spent (and the ledger never counts a preemption toward --max-restarts).
"""

from __future__ import annotations

from typing import Sequence

from launcher.status.admission import Eviction
from trainer import contract

#: Seconds of clock difference allowed between the API server (eviction times) and the nodes (ledger times).
SKEW = 30.0
#: An attempt that ended this long after an eviction did not end because of it (the termination grace
#: period bounds how long a stop may take; this is a generous bound on it).
WINDOW = 30 * 60.0


def _stopped(i: contract.Incident) -> bool:
    """An attempt that ended the way a Kueue stop ends it: exit 143, or killed while stopping."""
    return i.kind == "preempted" and (i.code is None or i.code == contract.ExitCode.PREEMPTED)


def match(incidents: Sequence[contract.Incident], evictions: Sequence[Eviction]) -> dict[str, Eviction]:
    """{attempt name: the eviction that ended it}; an attempt gets at most one, an eviction at most one attempt.

    An eviction of known time takes the attempt that had started by then and ended soonest after
    it (within WINDOW). One known only to have come before a re-admission (`before`) takes the
    newest stopped attempt that ended before that and is not matched otherwise.
    """
    candidates = [i for i in incidents if _stopped(i) and i.ended_at is not None]
    out: dict[str, Eviction] = {}
    for e in sorted((e for e in evictions if e.at is not None), key=lambda e: e.at):
        t = e.at.timestamp()
        fits = [i for i in candidates if i.attempt not in out and i.started_at <= t + SKEW
                and t - SKEW <= i.ended_at <= t + WINDOW]
        if fits:
            out[min(fits, key=lambda i: i.ended_at).attempt] = e
    for e in evictions:
        if e.at is None and e.before is not None:
            t = e.before.timestamp()
            fits = [i for i in candidates if i.attempt not in out and i.ended_at <= t + SKEW]
            if fits:
                out[max(fits, key=lambda i: i.ended_at).attempt] = e
    return out


def cause(e: Eviction) -> str:
    """The ledger row's cause for an attempt Kueue stopped: the tag first, so a cut row still shows it."""
    head = "preempted by Kueue" if e.reason == "Preempted" else "evicted by Kueue"
    detail = e.preemption or e.reason
    return f"{head}, no retry spent ({detail}: {e.message})"

