"""The restart ledger's records and rules (pure): read by the runtime and by `launch status` alike."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Iterable, Mapping

from trainer.contract.exit_codes import ExitCode, describe_exit_code, is_retryable


# --- the restart ledger: <uri>/<run-id>/attempts/ -------------------------------------------
# Each start of `python -m trainer run` (in a pod: each container start) writes one object of
# its own, `attempts/<UTC start time>-n<node rank>-<8 hex>.json`, and only that process ever
# rewrites it (each write replaces the whole object atomically): when it started, the step it
# resumed from, how its own previous attempt ended, the newest step it committed (moved at each
# commit), and at its end its exit code and cause. Object stores have no append; one
# write-once-per-writer object per attempt needs none, and concurrent writers never share a key.
# A start that finds no end in its predecessor's record says "unknown (killed)".
#
# Node rank 0 judges the crash-loop budget on its own attempts and, when it is spent, writes
# `attempts/crash-loop.json`, which every node reads at start (and while its ranks have not yet
# started training) and then exits CRASH_LOOP too. The run stays stopped until the `attempts/`
# folder is removed (or another --run-id is used).
#
# The functions below are pure and stdlib-only, so the launcher can read the same ledger.

ATTEMPTS_DIR = "attempts"
CRASH_LOOP_NAME = "crash-loop.json"
LEDGER_FORMAT = 1
CAUSE_UNKNOWN = "unknown (killed)"
_ATTEMPT_NAME_RE = re.compile(r"^(\d{8}T\d{6}\.\d{6}Z)-n(\d+)-([0-9a-f]{8})\.json$")


def attempt_name(started_at: float, node_rank: int, token: str) -> str:
    """`20260127T043000.123456Z-n0-1a2b3c4d.json`: names sort by start time."""
    micros = int(round(started_at * 1_000_000))
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(micros // 1_000_000)) + f".{micros % 1_000_000:06d}Z"
    return f"{stamp}-n{int(node_rank)}-{token}.json"


def parse_attempt_name(name: str) -> tuple[str, int, str] | None:
    """(UTC stamp, node rank, token) of an attempt object's name; None for anything else (temp files too)."""
    m = _ATTEMPT_NAME_RE.match(name.rstrip("/").rsplit("/", 1)[-1])
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One start of the run on one node, as its ledger object records it."""

    name: str
    node_rank: int
    started_at: float
    resumed_from: int | None = None  # the run's `latest` when it started; None: no checkpoint yet
    host: str = ""
    pid: int = 0
    #: How this node's previous attempt ended, as far as this one knew: {"attempt", "code", "cause"}.
    previous: Mapping | None = None
    committed: int | None = None  # the newest step this attempt committed
    committed_at: float | None = None
    last_step: int | None = None  # the newest step any local rank finished (known at the end)
    stopping: str | None = None  # set when a stop (SIGTERM, cloud notice) was requested
    ended_at: float | None = None
    code: int | None = None  # exit code; None while running, or when it was killed
    cause: str | None = None
    #: Started by the same supervisor after its previous attempt lost a rank (an in-place restart), not
    #: by a new pod or process. Records written before in-place restarts existed read as False.
    in_place: bool = False

    def to_json(self) -> bytes:
        doc = {"format": LEDGER_FORMAT, **dataclasses.asdict(self)}
        doc["previous"] = dict(self.previous) if self.previous is not None else None
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, name: str, raw: bytes | None) -> "Attempt | None":
        """The record in an attempt object; None for one that is not (yet) a whole, valid record."""
        if raw is None or parse_attempt_name(name) is None:
            return None
        try:
            doc = json.loads(raw.decode())
            if not isinstance(doc, dict) or doc.get("format") != LEDGER_FORMAT:
                return None
            fields = {f.name for f in dataclasses.fields(cls)}
            kwargs = {k: v for k, v in doc.items() if k in fields}
            kwargs["name"] = name.rstrip("/").rsplit("/", 1)[-1]
            a = cls(**kwargs)
            float(a.started_at), int(a.node_rank)
            if not isinstance(a.in_place, bool):
                return None
        except (UnicodeDecodeError, ValueError, TypeError):
            return None
        return a


def parse_ledger(objects: Mapping[str, bytes | None]) -> list[Attempt]:
    """Every valid attempt among {object name: bytes}, oldest first; other names and broken ones are left out."""
    out = [a for name, raw in objects.items() if (a := Attempt.from_json(name, raw)) is not None]
    return sorted(out, key=lambda a: (a.started_at, a.name))


def node_series(attempts: Iterable[Attempt], node_rank: int = 0) -> list[Attempt]:
    """One node's attempts, oldest first (node rank 0's series is the one the budget is judged on)."""
    return sorted((a for a in attempts if a.node_rank == node_rank), key=lambda a: (a.started_at, a.name))


def attempt_end(a: Attempt, following: Attempt | None) -> tuple[str, int | None, str]:
    """(kind, exit code, cause) of how an attempt ended; kind: finished, preempted, failed or running.

    A record without an end was killed (the supervisor had no chance to write it) unless no later
    attempt of the node exists, in which case it may still be running.
    """
    if a.code is not None:
        code = int(a.code)
        cause = a.cause or describe_exit_code(code)
        if code == 0:
            return "finished", 0, cause
        # Asked to stop (SIGTERM, a cloud notice), then killed for not stopping in time: the preemption's doing.
        preempted = code == ExitCode.PREEMPTED or (bool(a.stopping) and is_retryable(code)
                                                   and code != ExitCode.CRASH_LOOP)
        return ("preempted" if preempted else "failed"), code, cause
    if following is None:
        return "running", None, "running (or killed; no later start yet)"
    if a.stopping:
        return "preempted", None, f"stopping ({a.stopping}), then killed before it could exit"
    return "failed", None, CAUSE_UNKNOWN


def committed_by(a: Attempt, following: Attempt | None) -> int | None:
    """The newest step committed while `a` ran: its own record, or what the next start resumed from."""
    steps = [s for s in (a.committed, following.resumed_from if following else None) if s is not None]
    return max(steps) if steps else None


def made_progress(a: Attempt, following: Attempt | None) -> bool:
    """Whether `a` committed a step newer than the one it resumed from."""
    c = committed_by(a, following)
    return c is not None and (a.resumed_from is None or c > a.resumed_from)


def crash_loop(series: list[Attempt], max_restarts: int | None) -> list[Attempt] | None:
    """The failed attempts that spent the budget (oldest first), or None while it is not spent.

    `series`: one node's attempts, oldest first. Walking back from the newest: a preemption is
    passed over (it never counts), an attempt that committed a new step ends the walk, as does a
    finished one; every other ended attempt counts. More than `max_restarts` in a row is a crash
    loop: max_restarts restarts were allowed, and the attempt after them failed too. None: no budget.
    """
    if max_restarts is None:
        return None
    counted: list[Attempt] = []
    for i in range(len(series) - 1, -1, -1):
        a, following = series[i], series[i + 1] if i + 1 < len(series) else None
        kind, _, _ = attempt_end(a, following)
        if kind == "finished" or made_progress(a, following):
            break
        if kind == "failed":
            counted.append(a)
    return counted[::-1] if len(counted) > max_restarts else None


def crash_loop_message(failed: list[Attempt], series: list[Attempt], max_restarts: int) -> str:
    """One line: the budget, and each counted attempt with when it started, its step and its cause."""
    following = {a.name: series[i + 1] for i, a in enumerate(series[:-1])}
    parts = []
    for a in failed:
        _, code, cause = attempt_end(a, following.get(a.name))
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.started_at))
        step = "no checkpoint" if a.resumed_from is None else f"step {a.resumed_from}"
        parts.append(f"{when} from {step}: " + (f"exit {code} ({cause})" if code is not None else cause))
    return (f"crash loop: {len(failed)} attempts in a row failed without committing a new step "
            f"(--max-restarts {max_restarts}): " + "; ".join(parts))


@dataclasses.dataclass(frozen=True)
class Incident:
    """How one attempt ended and what that cost, for `launch status` and `launch chaos`."""

    attempt: str
    node_rank: int
    started_at: float
    ended_at: float | None  # its recorded end, else the next start
    kind: str  # attempt_end's: preempted, failed, running, finished
    code: int | None
    cause: str
    resumed_from: int | None
    committed: int | None
    steps_redone: int | None  # steps it had run past its last commit that the next start ran again
    seconds_lost: float | None  # from its last commit (or its start, without one) to the next start
    #: The next start was an in-place restart by the same supervisor, not a new pod.
    recovered_in_place: bool = False


@dataclasses.dataclass(frozen=True)
class LedgerSummary:
    attempts: int
    incidents: list[Incident]
    first_start: float | None
    #: Time that ended in a committed step (each attempt's start to its last commit) over the wall
    #: time since the first start; None without attempts.
    goodput: float | None
    crash_loop: list[Attempt] | None
    #: How many of the attempts were in-place restarts (the rest of the restarts replaced a pod).
    in_place: int = 0


def summarize_ledger(attempts: Iterable[Attempt], now: float, max_restarts: int | None = None,
                     node_rank: int = 0) -> LedgerSummary:
    """Incidents and goodput of one node's series (node rank 0's by default), from its ledger records."""
    series = node_series(attempts, node_rank)
    incidents = []
    useful = 0.0
    for i, a in enumerate(series):
        following = series[i + 1] if i + 1 < len(series) else None
        kind, code, cause = attempt_end(a, following)
        committed = committed_by(a, following)
        progressed = made_progress(a, following)
        if progressed and a.committed_at is not None:
            useful += max(0.0, a.committed_at - a.started_at)
        ended = a.ended_at if a.ended_at is not None else (following.started_at if following else None)
        redone = lost = None
        if following is not None:
            reached = a.last_step if a.last_step is not None else committed
            if reached is not None:
                redone = max(0, reached - (following.resumed_from or 0))
            since = a.committed_at if progressed and a.committed_at is not None else a.started_at
            lost = max(0.0, following.started_at - since)
        incidents.append(Incident(attempt=a.name, node_rank=a.node_rank, started_at=a.started_at, ended_at=ended,
                                  kind=kind, code=code, cause=cause, resumed_from=a.resumed_from,
                                  committed=committed, steps_redone=redone, seconds_lost=lost,
                                  recovered_in_place=following is not None and following.in_place))
    first = series[0].started_at if series else None
    wall = (now - first) if first is not None else 0.0
    return LedgerSummary(attempts=len(series), incidents=incidents, first_start=first,
                         goodput=(min(1.0, useful / wall) if wall > 0 else None) if series else None,
                         crash_loop=crash_loop(series, max_restarts), in_place=sum(a.in_place for a in series))
