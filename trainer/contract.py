"""The contract between the launcher and the runtime: standard library only.

Everything that crosses from `launch` into a pod is named here once: the
environment variables that carry the runtime's settings, the exit codes that
tell the Kubeflow training operator whether to retry, and the checkpoint
layout. The launcher imports this module and nothing else of `trainer`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import time
from typing import Iterable, Mapping

# --- container ---------------------------------------------------------------

#: The Kubeflow training operator only injects MASTER_ADDR & co. into this one.
CONTAINER_NAME = "pytorch"

# --- environment: one KUBETRAIN_* variable per `python -m trainer run` flag ---

ENV_PREFIX = "KUBETRAIN_"
ENV_NPROC_PER_NODE = "KUBETRAIN_NPROC_PER_NODE"
ENV_CHECKPOINT_URI = "KUBETRAIN_CHECKPOINT_URI"
ENV_RUN_ID = "KUBETRAIN_RUN_ID"
ENV_CHECKPOINT_EVERY_STEPS = "KUBETRAIN_CHECKPOINT_EVERY_STEPS"
ENV_CHECKPOINT_EVERY_SECONDS = "KUBETRAIN_CHECKPOINT_EVERY_SECONDS"
ENV_CHECKPOINT_KEEP = "KUBETRAIN_CHECKPOINT_KEEP"
ENV_GRACE_SECONDS = "KUBETRAIN_GRACE_SECONDS"
ENV_HANG_TIMEOUT = "KUBETRAIN_HANG_TIMEOUT"
ENV_PREEMPTION_URL = "KUBETRAIN_PREEMPTION_URL"
ENV_PREEMPTION_POLL_SECONDS = "KUBETRAIN_PREEMPTION_POLL_SECONDS"
ENV_SPOOL_DIR = "KUBETRAIN_SPOOL_DIR"
#: Seconds restore keeps retrying a checkpoint it could not read because of a storage error
#: (not a verified corrupt one) before the run exits INFRA with `latest` untouched.
ENV_STORAGE_TIMEOUT = "KUBETRAIN_STORAGE_TIMEOUT"
#: Restarts in a row without a newly committed step before the run stops for good (exit CRASH_LOOP).
#: `launch --max-restarts` sets it from the same number as the PyTorchJob's backoffLimit.
ENV_MAX_RESTARTS = "KUBETRAIN_MAX_RESTARTS"
#: A code bundle (tar.gz; a path or fsspec URI) to unpack and run from, and its sha256.
ENV_CODE_URI = "KUBETRAIN_CODE_URI"
ENV_CODE_SHA256 = "KUBETRAIN_CODE_SHA256"
#: Where the bundle is unpacked (default: a fresh temp dir).
ENV_WORKDIR = "KUBETRAIN_WORKDIR"
#: Set by the supervisor for its workers. Given to the supervisor itself (by `launch chaos`),
#: it uses that folder rather than a temp one, so a caller can watch the ranks' progress.
ENV_CONTROL_DIR = "KUBETRAIN_CONTROL_DIR"
#: Set by the supervisor for its workers: the folder where it prefetches the newest
#: checkpoint's replicated state while they start (trainer/checkpoint/prefetch.py).
ENV_PREFETCH_DIR = "KUBETRAIN_PREFETCH_DIR"
#: Fault injection for `launch chaos`: a folder whose files make the runtime misbehave on
#: purpose (FAULT_* below). Unset in production; read only when set.
ENV_FAULTS_DIR = "KUBETRAIN_FAULTS_DIR"
#: Initialise a run that has no checkpoint of its own from another run's newest committed
#: step: a run folder URI, or WARM_START_LATEST (the previous run of the same schedule).
ENV_WARM_START_FROM = "KUBETRAIN_WARM_START_FROM"
#: "1": restore the optimizer too on a warm start (default: weights only, a fresh optimizer).
ENV_WARM_START_OPTIMIZER = "KUBETRAIN_WARM_START_OPTIMIZER"
WARM_START_LATEST = "latest"
# The in-cluster submitter of a schedule (`python -m launcher.submit`, run by its CronJob).
ENV_SCHEDULE = "KUBETRAIN_SCHEDULE"  # which schedule's stored spec to submit
ENV_RUN_NAME = "KUBETRAIN_RUN_NAME"  # the run's name: its Job's name, through the downward API
ENV_SUBMIT_POLL_SECONDS = "KUBETRAIN_SUBMIT_POLL_SECONDS"
# Launcher-side settings (launch flags / project config), read by the launcher only.
ENV_IMAGE = "KUBETRAIN_IMAGE"
ENV_NAMESPACE = "KUBETRAIN_NAMESPACE"

# Set by the Kubeflow training operator in every replica (read, never written); the PET_MASTER_*
# pair by Kubeflow Trainer v2's Torch plugin instead of MASTER_*.
OPERATOR_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
)

def operator_node_rank(env) -> int:
    """This pod's node rank from the operator's env (PET_NODE_RANK, else RANK when MASTER_ADDR is set); 0 if none."""
    try:
        return int(env.get("PET_NODE_RANK") or (env.get("RANK") if env.get("MASTER_ADDR") else 0) or 0)
    except ValueError:
        return 0


# --- labels and names on the cluster -------------------------------------------------

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubetrain"
LABEL_JOB = "kubetrain.dev/job"
#: Every object of a schedule, and every run it started.
LABEL_SCHEDULE = "kubetrain.dev/schedule"
#: Set by the Job controller on a Job's pods (Kubernetes >= 1.27).
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
#: Set by the Kubeflow training operator on every pod of a job.
OPERATOR_JOB_NAME_LABEL = "training.kubeflow.org/job-name"
OPERATOR_REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
OPERATOR_REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
#: Where a ConfigMap code bundle is mounted in the pod.
CODE_MOUNT_PATH = "/kubetrain/code"
CODE_BUNDLE_NAME = "code.tar.gz"

# --- defaults: the one place each lives ----------------------------------------

DEFAULT_GRACE_SECONDS = 30.0
DEFAULT_CHECKPOINT_EVERY_STEPS = 100
DEFAULT_CHECKPOINT_KEEP = 3
DEFAULT_HANG_TIMEOUT = 0.0  # seconds without step progress; 0 disables the watchdog
DEFAULT_PREEMPTION_POLL_SECONDS = 5.0
DEFAULT_CHECKPOINT_DIR = "checkpoints"  # local runs, relative to the working dir
#: Long enough to ride out an object store's brownout or a throttling burst; short enough that a
#: real outage gives the pod back to the operator (exit INFRA, retried) instead of holding GPUs.
DEFAULT_STORAGE_TIMEOUT = 300.0

#: Seconds of the grace period kept back for the supervisor itself: after the
#: workers' deadline it still needs to signal torchrun and exit.
SUPERVISOR_GRACE_RESERVE = 2.0


def termination_grace_period_seconds(grace_seconds: float) -> int:
    """The pod's terminationGracePeriodSeconds for a runtime grace budget.

    The kubelet SIGKILLs at exactly this point; the runtime plans to have
    exited `SUPERVISOR_GRACE_RESERVE` seconds earlier, so both derive from one
    number and cannot disagree.
    """
    return int(grace_seconds + 0.999)


# --- exit codes ------------------------------------------------------------------


class ExitCode(enum.IntEnum):
    """Exit codes of `python -m trainer`.

    The operator's `restartPolicy: ExitCode` retries 128-255 and treats 1-127 as
    permanent. 128+N means "killed by signal N" (137: SIGKILL or the OOM killer).
    """

    OK = 0
    #: The user's code raised; retrying would fail the same way.
    USER_ERROR = 1
    #: Bad flags, URI or environment; nothing ran.
    USAGE = 2
    #: SIGTERM or a cloud preemption notice; the checkpoint committed first.
    PREEMPTED = 143
    #: The watchdog saw no step progress for the hang timeout and killed the workers.
    HANG = 200
    #: Rendezvous, collective transport or storage failure: the infrastructure, not the code.
    INFRA = 201
    #: The crash-loop budget is spent: more than --max-restarts attempts in a row ended in a
    #: retryable failure without committing a new step (the restart ledger lists them).
    CRASH_LOOP = 99

    @staticmethod
    def for_signal(signum: int) -> int:
        return 128 + int(signum)


def is_retryable(code: int) -> bool:
    """Whether the operator's ExitCode policy retries this exit code."""
    return code >= 128


def describe_exit_code(code: int) -> str:
    """A short human description of an exit code, read through the contract."""
    import signal

    try:
        known = ExitCode(code)
    except ValueError:
        known = None
    if known is ExitCode.PREEMPTED:
        return "preempted (SIGTERM), checkpoint committed"
    if known is ExitCode.CRASH_LOOP:
        return "crash loop: restart budget (--max-restarts) spent without a new checkpoint"
    if known is not None and known not in (ExitCode.OK,):
        return known.name.lower().replace("_", " ")
    if known is ExitCode.OK:
        return "finished"
    if 128 < code < 128 + 65:
        try:
            return "killed by " + signal.Signals(code - 128).name
        except ValueError:
            return f"killed by signal {code - 128}"
    return "failed (permanent)" if code < 128 else "failed (retryable)"


# --- checkpoint URIs: the one rule for what is local and what the runtime can open ---

#: URI schemes the runtime opens (trainer/storage.py: boto3 for s3/s3a, fsspec for the rest;
#: gs/gcs and az/abfs need gcsfs and adlfs beside fsspec). `launch` rejects any other scheme
#: before it creates anything: the pod would only fail with exit 2 once it was scheduled.
CHECKPOINT_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})
#: Schemes whose URI names no bucket or host: the path is all there is.
_SCHEMES_WITHOUT_HOST = frozenset({"file", "memory"})
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*$")


def is_local_uri(uri: str) -> bool:
    """A folder on this machine (a path or file://), read in place rather than downloaded."""
    return "://" not in uri or uri.startswith("file://")


def checkpoint_uri_problem(uri: str, schemes: frozenset[str] | set[str] = CHECKPOINT_SCHEMES) -> str | None:
    """Why `uri` cannot be a checkpoint root, in one line; None when it can.

    `schemes`: the protocols the caller can open (the runtime passes what is installed).
    """
    if not uri:
        return "checkpoint URI is empty; pass --checkpoint URI (a folder, file://, s3://BUCKET/PREFIX, gs://...)"
    if is_local_uri(uri):
        return None
    scheme, rest = uri.split("://", 1)
    if not _SCHEME_RE.match(scheme) or scheme not in schemes:
        known = ", ".join(f"{s}://" for s in sorted(CHECKPOINT_SCHEMES))  # the usual ones, not all of fsspec
        return f"checkpoint URI {uri!r}: unknown scheme {scheme!r}; use a folder or one of {known}"
    if scheme not in _SCHEMES_WITHOUT_HOST and not rest.split("/", 1)[0]:
        return f"checkpoint URI {uri!r} has no bucket; use {scheme}://BUCKET/PREFIX"
    return None


# --- checkpoint layout: <uri>/<run-id>/step-000001200/..., <uri>/<run-id>/latest ---

MANIFEST_NAME = "manifest.json"
LATEST_NAME = "latest"
STEP_DIR_PREFIX = "step-"
STEP_DIGITS = 9
MANIFEST_FORMAT = 1
_STEP_DIR_RE = re.compile(r"^step-(\d{%d,})$" % STEP_DIGITS)


def step_dir_name(step: int) -> str:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"{STEP_DIR_PREFIX}{step:0{STEP_DIGITS}d}"


def parse_step_dir_name(name: str) -> int | None:
    """The step of a `step-NNNNNNNNN` folder name, or None for anything else."""
    m = _STEP_DIR_RE.match(name.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


# --- scheduled runs: <schedule>-<minutes since the epoch> ------------------------------
# The CronJob controller names each Job <cronjob>-<scheduled time in Unix minutes>; a run
# (its PyTorchJob and checkpoint folder) takes its Job's name, so runs sort by time and a
# retried submitter pod finds its run again. `launch schedule trigger` names its Jobs alike.

_SCHEDULED_RUN_RE = re.compile(r"^(?P<schedule>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)-(?P<minutes>[0-9]{8,})$")


def scheduled_run_name(schedule: str, unix_seconds: float) -> str:
    return f"{schedule}-{int(unix_seconds) // 60}"


def parse_scheduled_run_name(name: str) -> tuple[str, int] | None:
    """(schedule, minutes) of a scheduled run's name, or None for any other name."""
    m = _SCHEDULED_RUN_RE.match(name)
    return (m.group("schedule"), int(m.group("minutes"))) if m else None


# --- runtime log lines that the launcher reads back (launch status) ---------------

#: Logged by rank 0 after restore(); the launcher parses it, so both use this text.
LOG_RESUMED = "resuming after step {step}"
#: Logged by rank 0 when a run without a checkpoint of its own starts from another run's.
LOG_WARM_START = "warm start from {uri} step {step}"
#: Logged by rank 0 once the preemption checkpoint committed.
LOG_PREEMPTED = "preempted: checkpoint step {step} committed"
_RESUMED_RE = re.compile(r"resuming after step (\d+)")
_PREEMPTED_RE = re.compile(r"preempted: checkpoint step (\d+) committed")


def parse_runtime_log(lines: list[str]) -> dict[str, int | None]:
    """The last resume and preemption steps a runtime log reports."""
    out: dict[str, int | None] = {"resumed_from": None, "preempted_at": None}
    for line in lines:
        if m := _RESUMED_RE.search(line):
            out["resumed_from"] = int(m.group(1))
        if m := _PREEMPTED_RE.search(line):
            out["preempted_at"] = int(m.group(1))
    return out


# --- control files between the supervisor and its workers (one pod, local disk) ---

CONTROL_STOP = "stop"  # written by the supervisor: please stop at the next step boundary
CONTROL_PREEMPTED = "preempted.json"  # written by each node's local rank 0 once the stop checkpoint committed
CONTROL_PROGRESS_PREFIX = "progress-rank-"  # heartbeat of each local rank: "<step> <time>"
CONTROL_ERROR_PREFIX = "error-rank-"  # the first exception of each rank, JSON
CONTROL_RESULT = "result.json"  # torchrun's outcome, written by trainer._torchrun

# --- fault-injection files in ENV_FAULTS_DIR (launch chaos) ---

#: What `launch chaos --local` can do to a run (trainer/chaos.py says what each one is).
CHAOS_KINDS = ("sigterm", "kill-worker", "kill-during-upload", "corrupt-checkpoint", "storage-outage")
FAULT_STORAGE_OUTAGE = "storage-outage"  # while present, every checkpoint write fails as in an outage
FAULT_SLOW_COMMIT = "slow-commit"  # holds seconds: rank 0 waits that long before writing a manifest,
# which widens the window in which a kill leaves a partial (uncommitted) step behind
CONTROL_COMMITTED = "committed"  # written by global rank 0 after each commit: "<step> <time>"


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


@dataclasses.dataclass(frozen=True)
class LedgerSummary:
    attempts: int
    incidents: list[Incident]
    first_start: float | None
    #: Time that ended in a committed step (each attempt's start to its last commit) over the wall
    #: time since the first start; None without attempts.
    goodput: float | None
    crash_loop: list[Attempt] | None


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
                                  committed=committed, steps_redone=redone, seconds_lost=lost))
    first = series[0].started_at if series else None
    wall = (now - first) if first is not None else 0.0
    return LedgerSummary(attempts=len(series), incidents=incidents, first_start=first,
                         goodput=(min(1.0, useful / wall) if wall > 0 else None) if series else None,
                         crash_loop=crash_loop(series, max_restarts))
