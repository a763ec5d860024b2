"""A job's status as a value: what `launch status` shows, typed and frozen (torchx's `AppStatus`).

launcher/status/build.py makes one from what launcher/k8s/status.py read; the printers in
launcher/status/report.py render it as text, and `doc()` here is its `-o json|yaml` form
(the keys users and tests read: change them only on purpose).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Mapping

from launcher.status.admission import Admission, Eviction
from trainer import contract

#: States in which a job's own condition is known to lag its pods (the operator writes it later).
NOT_YET_RUNNING = ("Pending", "Created")


@dataclasses.dataclass(frozen=True)
class PodStatus:
    """One pod of the job as it is now; `restarts` counts its replica's pod UIDs less one."""

    pod: str
    uid: str | None
    replica: str
    phase: str | None
    node: str | None
    restarts: int
    deleting: bool
    unschedulable: str | None = None  # the scheduler's message
    waiting: str | None = None  # reason: message
    exit_code: int | None = None  # of its container's terminated state, now or last
    #: The runtime's own words from this pod's log (the first replica's only): None and None when not read.
    progress: tuple[int | None, int | None] | None = None  # (resumed_from, preempted_at)

    @property
    def healthy(self) -> bool:
        return self.phase in ("Running", "Succeeded") and not self.deleting and not (
            self.exit_code not in (None, 0) and self.phase != "Running")

    @property
    def problem(self) -> str:
        """Why the pod is not healthy, in one short phrase ('' when nothing is known)."""
        if self.deleting:
            return "terminating"
        if self.unschedulable:
            return f"unschedulable: {self.unschedulable}"
        if self.waiting:
            return self.waiting
        if self.exit_code is not None and self.exit_code != 0:
            return f"last exit {self.exit_code}: {contract.describe_exit_code(self.exit_code)}"
        return ""


@dataclasses.dataclass(frozen=True)
class Cause:
    """A distinct reason a pod of the job ended early: an exit code's meaning, an eviction, a preemption."""

    pod: str
    replica: str
    cause: str
    retried: bool
    exit_code: int | None = None  # an exit; else a loss, with its event's reason
    reason: str | None = None
    count: int | None = None  # losses (and a TrainJob's exits) are counted; the operator's exit events are not


@dataclasses.dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str | None
    message: str | None


@dataclasses.dataclass(frozen=True)
class Event:
    reason: str
    message: str
    count: int


@dataclasses.dataclass(frozen=True)
class Progress:
    """The newest committed step the runtime logged, and when; resumed from or preempted at."""

    step: int | None = None
    at: datetime.datetime | None = None
    resumed_from: int | None = None
    preempted_at: int | None = None


@dataclasses.dataclass(frozen=True)
class Ledger:
    """The runtime's restart ledger: its summary, or why it is not shown; Kueue's evictions by attempt."""

    summary: contract.LedgerSummary | None
    unread: str | None = None
    by_kueue: Mapping[str, Eviction] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainerProgress:
    """A TrainJob's `status.trainerStatus`: what the runtime last posted to Kubeflow Trainer (v2.3+)."""

    percent: int | None
    eta_seconds: int | None
    metrics: Mapping[str, str]  # name -> value, as posted (trainer/trainjob_status.py names them)
    updated: datetime.datetime | None


@dataclasses.dataclass(frozen=True)
class JobStatus:
    name: str
    namespace: str
    uid: str | None
    state: str  # the operator's word: its newest true condition
    conditions: tuple[Condition, ...]
    replicas: Mapping[str, Any]  # the operator's replicaStatuses, as it wrote them
    expected_pods: int
    pods: tuple[PodStatus, ...]  # in natural replica order
    restarts: int
    restarts_by_pod: Mapping[str, int]  # pod name -> restarts, only those with any
    retries_left: int | None
    causes: tuple[Cause, ...]
    create_failures: tuple[str, ...]  # newest first
    progress: Progress
    events: tuple[Event, ...]
    ledger: Ledger
    admission: Admission | None
    now: datetime.datetime
    trainer: TrainerProgress | None = None  # a TrainJob whose runtime posts progress (TrainJobStatus gate)

    @property
    def running(self) -> int:
        return sum(1 for p in self.pods if p.phase == "Running")

    @property
    def lagging(self) -> bool:
        """The job's condition still says it has not started, while every pod it asks for runs."""
        return self.state in NOT_YET_RUNNING and self.expected_pods > 0 and self.running >= self.expected_pods


def _pod_doc(p: PodStatus) -> dict[str, Any]:
    out: dict[str, Any] = {"pod": p.pod, "uid": p.uid, "replica": p.replica, "phase": p.phase, "node": p.node,
                           "restarts": p.restarts, "deleting": p.deleting}
    if p.unschedulable is not None:
        out["unschedulable"] = p.unschedulable
    if p.waiting is not None:
        out["waiting"] = p.waiting
    if p.exit_code is not None:
        out.update(exit_code=p.exit_code, exit_meaning=contract.describe_exit_code(p.exit_code),
                   retryable=contract.is_retryable(p.exit_code))
    if p.progress is not None:
        out.update(resumed_from=p.progress[0], preempted_at=p.progress[1])
    return out


def _cause_doc(c: Cause) -> dict[str, Any]:
    out: dict[str, Any] = {"pod": c.pod, "replica": c.replica, "cause": c.cause}
    if c.exit_code is not None:
        out["exit_code"] = c.exit_code
    if c.reason is not None:
        out["reason"] = c.reason
    out["retried"] = c.retried
    if c.count is not None:
        out["count"] = c.count
    return out


def doc(s: JobStatus) -> dict[str, Any]:
    """`launch status -o json|yaml`."""
    from launcher.status import admission, ledger

    led = s.ledger
    return {"name": s.name, "namespace": s.namespace, "uid": s.uid, "state": s.state,
            "conditions": [dataclasses.asdict(c) for c in s.conditions],
            "replicas": dict(s.replicas), "expected_pods": s.expected_pods,
            "pods": [_pod_doc(p) for p in s.pods],
            "restarts": s.restarts, "restarts_by_pod": dict(s.restarts_by_pod), "retries_left": s.retries_left,
            "causes": [_cause_doc(c) for c in s.causes], "create_failures": list(s.create_failures),
            "committed_step": s.progress.step,
            "committed_at": s.progress.at.isoformat() if s.progress.at else None,
            "events": [dataclasses.asdict(e) for e in s.events],
            "ledger": ledger.doc(led.summary, led.by_kueue) if led.summary is not None else {"not_shown": led.unread},
            **({"admission": admission.doc(s.admission)} if s.admission is not None else {}),
            **({"trainer_status": _trainer_doc(s.trainer)} if s.trainer is not None else {})}


def _trainer_doc(t: TrainerProgress) -> dict[str, Any]:
    return {"progress_percent": t.percent, "eta_seconds": t.eta_seconds, "metrics": dict(t.metrics),
            "updated": t.updated.isoformat() if t.updated else None}
