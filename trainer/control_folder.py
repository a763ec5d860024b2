"""The pod's control folder (KUBETRAIN_CONTROL_DIR): what a supervisor and its ranks tell each other.

One frozen record per file, each with its write and its read; nothing else opens these paths.

    file                  record          written by                    read by
    stop                  StopRequest     the supervisor                every rank (the stop agreement)
    progress-rank-R       Progress        rank R, rate-limited          the watchdog, `launch chaos`
    committed             Committed       global rank 0, per commit     the supervisor (the ledger's mark)
    total-steps           TotalSteps      global rank 0, once           node 0's TrainJob status poster
    preempted.json        Preempted       each node's local rank 0      the supervisor (exit 143, not 0)
    error-rank-R.json     RankError       rank R's wrapper (worker.py)  the supervisor (the root cause)
    pid-rank-R            RankPid         rank R's wrapper (worker.py)  `launch chaos` (which PID is rank R)
    result.json           TorchrunResult  trainer/torchrun_main.py      the supervisor (classify)
    stats-rank-R.json     RankStats       rank R (its Checkpointer)     the supervisor's /metrics (trainer/metrics/)
    spare-ready           SpareReady      the warm spare (torchrun_main) the supervisor (its log; the next attempt's)

Rules: one writer per file; every write replaces the file whole (a temp file, then a rename),
so a reader never sees half of one; a file that is not there (yet) or does not parse reads as
None, and a per-rank file as that rank left out. Local disk of one pod, standard library only:
the supervisor, which imports no torch, reads all of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

from trainer.processes import start_time

_TMP = ".tmp"


def _replace(folder: str, name: str, text: str) -> None:
    path = os.path.join(folder, name)
    with open(path + _TMP, "w") as f:
        f.write(text)
    os.replace(path + _TMP, path)


def _read(folder: str, name: str) -> str | None:
    try:
        with open(os.path.join(folder, name)) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _per_rank(folder: str, prefix: str, suffix: str = "") -> dict[int, str]:
    """{rank: text} of every whole `<prefix><rank><suffix>` file (a temp file is skipped)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    out = {}
    for name in names:
        if name.startswith(prefix) and name.endswith(suffix) and not name.endswith(_TMP):
            try:
                rank = int(name[len(prefix):len(name) - len(suffix)])
            except ValueError:
                continue
            text = _read(folder, name)
            if text is not None:
                out[rank] = text
    return out


def _pair(text: str | None, first: Callable[[str], Any], second: Callable[[str], Any]) -> tuple[Any, Any] | None:
    """The two fields of a "<a> <b>" file, converted; None when it has not exactly two that convert."""
    fields = (text or "").split()
    try:
        return (first(fields[0]), second(fields[1])) if len(fields) == 2 else None
    except ValueError:
        return None


def _json(text: str | None) -> dict[str, Any] | None:
    try:
        doc = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


@dataclasses.dataclass(frozen=True)
class StopRequest:
    """The supervisor asks its ranks to checkpoint and stop at the next agreeing step."""

    reason: str  # SIGTERM, SIGINT, a cloud's preemption notice
    NAME = "stop"

    def write(self, folder: str) -> None:
        _replace(folder, self.NAME, self.reason)

    @classmethod
    def read(cls, folder: str) -> StopRequest | None:
        text = _read(folder, cls.NAME)
        return None if text is None else cls(text)

    @classmethod
    def exists(cls, folder: str) -> bool:
        """Whether a stop was asked for: one stat, cheap enough for every agreeing step."""
        return os.path.exists(os.path.join(folder, cls.NAME))


@dataclasses.dataclass(frozen=True)
class Progress:
    """Rank `rank` finished `step` at `time` (unix): its heartbeat, "<step> <time>"."""

    rank: int
    step: int
    time: float
    PREFIX = "progress-rank-"

    def write(self, folder: str) -> None:
        _replace(folder, f"{self.PREFIX}{self.rank}", f"{self.step} {self.time}\n")

    @classmethod
    def read_all(cls, folder: str) -> dict[int, Progress]:
        pairs = {rank: _pair(text, int, float) for rank, text in _per_rank(folder, cls.PREFIX).items()}
        return {rank: cls(rank, *pair) for rank, pair in pairs.items() if pair is not None}


@dataclasses.dataclass(frozen=True)
class Committed:
    """Global rank 0 committed `step` at `time`: "<step> <time>"."""

    step: int
    time: float
    NAME = "committed"

    def write(self, folder: str) -> None:
        _replace(folder, self.NAME, f"{self.step} {self.time}\n")

    @classmethod
    def read(cls, folder: str) -> Committed | None:
        pair = _pair(_read(folder, cls.NAME), int, float)
        return None if pair is None else cls(*pair)


@dataclasses.dataclass(frozen=True)
class SpareReady:
    """The warm spare (trainer/supervisor/spare.py), process `pid`, and its forkserver have torch imported,
    `seconds` after it started: "<pid> <seconds>". The next attempt's, so clear_attempt leaves it."""

    pid: int
    seconds: float
    NAME = "spare-ready"

    def write(self, folder: str) -> None:
        _replace(folder, self.NAME, f"{self.pid} {self.seconds:.3f}\n")

    @classmethod
    def read(cls, folder: str) -> SpareReady | None:
        pair = _pair(_read(folder, cls.NAME), int, float)
        return None if pair is None else cls(*pair)

    @classmethod
    def clear(cls, folder: str) -> None:
        try:
            os.unlink(os.path.join(folder, cls.NAME))
        except OSError:
            pass


@dataclasses.dataclass(frozen=True)
class TotalSteps:
    """The script declared the run's length (Checkpointer(total_steps=N)): "<steps>"."""

    steps: int
    NAME = "total-steps"

    def write(self, folder: str) -> None:
        _replace(folder, self.NAME, f"{self.steps}\n")

    @classmethod
    def read(cls, folder: str) -> TotalSteps | None:
        try:
            steps = int((_read(folder, cls.NAME) or "").strip())
        except ValueError:
            return None
        return cls(steps) if steps > 0 else None


@dataclasses.dataclass(frozen=True)
class Preempted:
    """A node's stop checkpoint (step) committed: its supervisor exits 143, not 0. JSON."""

    step: int
    time: float
    NAME = "preempted.json"

    def write(self, folder: str) -> None:
        _replace(folder, self.NAME, json.dumps(dataclasses.asdict(self)))

    @classmethod
    def read(cls, folder: str) -> Preempted | None:
        doc = _json(_read(folder, cls.NAME))
        try:
            return cls(int(doc["step"]), float(doc["time"])) if doc else None
        except (KeyError, TypeError, ValueError):
            return None


@dataclasses.dataclass(frozen=True)
class RankError:
    """The exception that ended a rank's script, as its wrapper caught it. JSON."""

    rank: int
    type: str
    message: str
    time: float
    traceback: str | None = None
    comm_error: bool = False  # a peer went away: follows from another rank's failure
    infra_error: bool = False  # the checkpoint storage kept failing: retryable
    config_error: bool = False  # the object store refused the configuration: permanent
    PREFIX, SUFFIX = "error-rank-", ".json"

    def write(self, folder: str) -> None:
        _replace(folder, f"{self.PREFIX}{self.rank}{self.SUFFIX}", json.dumps(dataclasses.asdict(self)))

    @classmethod
    def read_all(cls, folder: str) -> list[RankError]:
        """Every rank's error, by rank."""
        fields = {f.name for f in dataclasses.fields(cls)}
        out = []
        for _, text in sorted(_per_rank(folder, cls.PREFIX, cls.SUFFIX).items()):
            doc = _json(text)
            try:
                out.append(cls(**{k: v for k, v in doc.items() if k in fields}))
            except (AttributeError, TypeError):
                continue
        return out


@dataclasses.dataclass(frozen=True)
class RankPid:
    """Rank `rank` is the process `pid` that started at `started` (clock ticks): "<pid> <started>".

    A rank's DataLoader workers inherit RANK and its command line; only this record says which
    process is the rank, and the start time tells a reused PID apart."""

    rank: int
    pid: int
    started: int
    PREFIX = "pid-rank-"

    @classmethod
    def of_this_process(cls, rank: int) -> RankPid:
        return cls(rank, os.getpid(), start_time(os.getpid()) or 0)

    def write(self, folder: str) -> None:
        _replace(folder, f"{self.PREFIX}{self.rank}", f"{self.pid} {self.started}\n")

    @classmethod
    def read_all(cls, folder: str) -> dict[int, RankPid]:
        pairs = {rank: _pair(text, int, int) for rank, text in _per_rank(folder, cls.PREFIX).items()}
        return {rank: cls(rank, *pair) for rank, pair in pairs.items() if pair is not None}

    @classmethod
    def live(cls, folder: str) -> dict[int, int]:
        """{rank: pid} of the recorded ranks that are still the same process."""
        return {rank: r.pid for rank, r in cls.read_all(folder).items() if start_time(r.pid) == r.started}


@dataclasses.dataclass(frozen=True)
class RankFailure:
    """One rank torchrun saw fail: its exit code (negative: killed by that signal)."""

    rank: int
    exitcode: int
    time: float = 0.0
    signal: str | None = None  # the signal's name when exitcode < 0


@dataclasses.dataclass(frozen=True)
class TorchrunResult:
    """torchrun's outcome, as trainer/torchrun_main.py caught it instead of a page of traceback. JSON.

    At most one of the three reasons is set; none when torchrun ran its ranks to their ends."""

    failures: tuple[RankFailure, ...] = ()
    usage_error: str | None = None  # torchrun refused its arguments: no retry helps
    incompatible_torch: str | None = None  # this torch has no usable torchrun: no retry helps
    agent_error: str | None = None  # rendezvous or the agent failed: infrastructure
    NAME = "result.json"

    def write(self, folder: str) -> None:
        doc = {k: v for k, v in dataclasses.asdict(self).items() if k == "failures" or v is not None}
        _replace(folder, self.NAME, json.dumps(doc))

    @classmethod
    def read(cls, folder: str) -> TorchrunResult | None:
        doc = _json(_read(folder, cls.NAME))
        if doc is None:
            return None
        try:
            failures = tuple(RankFailure(**f) for f in doc.get("failures") or ())
            return cls(failures, doc.get("usage_error"), doc.get("incompatible_torch"), doc.get("agent_error"))
        except TypeError:
            return None


@dataclasses.dataclass(frozen=True)
class CheckpointEvent:
    """One save or restore as rank `RankStats.rank` saw it; `seq` counts this rank's events from 1."""

    seq: int
    kind: str  # "save" or "restore"
    step: int | None
    time: float
    ok: bool = True  # save: committed (every rank learns the same outcome)
    stall_s: float = 0.0  # save: what training waited for (the upload before, the snapshot; a blocking save's write)
    upload_s: float = 0.0  # save: writing this rank's files
    bytes: int = 0  # save: this rank's files
    seconds: float = 0.0  # restore: from restore() to the state applied
    source: str = ""  # restore: "checkpoint", "warm-start" or "none"


_EVENT_FIELDS = frozenset(f.name for f in dataclasses.fields(CheckpointEvent))


@dataclasses.dataclass(frozen=True)
class RankStats:
    """What rank `rank` measured for /metrics: its newest checkpoint events (at most KEEP, oldest
    first; the reader takes those past the last `seq` it saw) and its storage errors by kind so far.
    Rewritten at each event and, when the errors changed, at a heartbeat. JSON."""

    rank: int
    events: tuple[CheckpointEvent, ...] = ()
    storage_errors: dict[str, int] = dataclasses.field(default_factory=dict)
    PREFIX, SUFFIX = "stats-rank-", ".json"
    KEEP = 64  # events between two scrapes: saves are seconds apart at the least

    def write(self, folder: str) -> None:
        # vars(), not dataclasses.asdict: asdict deep-copies every event, 10x the time of the write.
        doc = {"rank": self.rank, "events": [vars(e) for e in self.events], "storage_errors": self.storage_errors}
        _replace(folder, f"{self.PREFIX}{self.rank}{self.SUFFIX}", json.dumps(doc))

    @classmethod
    def read_all(cls, folder: str) -> dict[int, RankStats]:
        fields = _EVENT_FIELDS
        out = {}
        for rank, text in _per_rank(folder, cls.PREFIX, cls.SUFFIX).items():
            doc = _json(text)
            try:
                events = tuple(CheckpointEvent(**{k: v for k, v in e.items() if k in fields}) for e in doc["events"])
                errors = {str(k): int(v) for k, v in doc["storage_errors"].items()}
            except (AttributeError, KeyError, TypeError, ValueError):
                continue
            out[rank] = cls(rank, events, errors)
        return out


#: What one torchrun's ranks (and torchrun) wrote: gone before an in-place restart's ranks start, so the
#: supervisor's classify(), the watchdog and `launch chaos` see only the new attempt. The stop file is
#: the supervisor's own and is never there then (no in-place restart once a stop was asked for).
_ATTEMPT_FILES = (Progress.PREFIX, Committed.NAME, TotalSteps.NAME, Preempted.NAME, RankError.PREFIX, RankPid.PREFIX,
                  TorchrunResult.NAME, RankStats.PREFIX)


def clear_attempt(folder: str) -> None:
    """Remove every record an attempt's ranks wrote (their temp files too)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name.startswith(_ATTEMPT_FILES):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass
