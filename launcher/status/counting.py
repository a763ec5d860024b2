"""The counts behind `launch status`: restarts from pod UIDs, their causes, the retries left, progress (pure).

Restarts are pod UIDs per replica over the job's life, never summed events: Kubernetes
merges and expires events, but no event merges two UIDs. Takes the plain records of
launcher/records.py; launcher/status/build.py turns the counts into a JobStatus.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from launcher import backends
from launcher.records import natural_key, parse_time
from trainer import contract

#: Events that a pod gets once, when it comes into being: the scheduler placing it or failing to.
#: Every incarnation of a replica (the operator reuses the name) has its own UID on them.
POD_BIRTH_REASONS = ("Scheduled", "FailedScheduling")
#: Events that say a pod reached a node: the scheduler bound it, or its kubelet worked on it.
PLACED_REASONS = frozenset({"Scheduled", "Pulling", "Pulled", "Created", "Started", "Killing", "BackOff"})

#: Why a pod went away other than by exiting, by the reason of the event on the pod. The
#: operator recreates it (same name); like a Job's disruptions, it does not spend the retry budget.
POD_LOSS_CAUSES = {
    "TaintManagerEviction": "evicted: its node was tainted NoExecute (not ready, unreachable, out of service)",
    "NodeNotReady": "its node became not ready",  # context: the eviction that follows is the loss
    "Preempted": "preempted by a higher-priority pod",
    "Evicted": "evicted by the kubelet (node pressure)",
}
NOT_A_LOSS = {"NodeNotReady"}


def own_pods(job_uid: str, pods: Iterable[dict]) -> list[dict]:
    """The pods this job owns: a deleted job's pods of the same name, still going, are not its own."""
    return [p for p in pods if p.get("owner_uid") in (None, job_uid)]


def incarnation_key(spec_names: set[str] | frozenset[str], pod_name: str) -> str:
    """The replica name a pod is an incarnation of: its own where the controller reuses it (a PyTorchJob's
    master-0), else the spec name its Job's random suffix extends (a TrainJob's <job>-node-0-1-x7k2p)."""
    if pod_name in spec_names:
        return pod_name
    base = pod_name.rsplit("-", 1)[0]
    return base if base in spec_names else pod_name


def pod_incarnations(job: dict, pods: Sequence[dict], pod_events: Sequence[dict]) -> dict[str, set[str]]:
    """Each replica's pod UIDs over the job's life: its pods now, and the UIDs its pods' events name.

    Keyed by incarnation_key. Only UIDs of birth events (POD_BIRTH_REASONS) created at or after the
    job count, and a UID seen on any event older than the job belongs to an earlier job of the same
    name. Events are never summed: UIDs are, and no event merges two UIDs. Kubernetes keeps events
    an hour, so a replica recreated longer ago than that counts from its pods since.
    """
    uid, created = job["metadata"].get("uid"), parse_time(job["metadata"].get("creationTimestamp"))
    spec = backends.of(job).replica_names(job)
    out: dict[str, set[str]] = {n: set() for n in spec}
    for p in own_pods(uid, pods):
        out.setdefault(incarnation_key(spec, p["name"]), set()).add(p["uid"])
    older = {e["uid"] for e in pod_events if created is not None and e.get("created") is not None
             and e["created"] < created}
    for e in pod_events:
        key = incarnation_key(spec, e["name"])
        if (e.get("kind") in (None, "Pod") and key in out and e.get("uid") and e["uid"] not in older
                and e["reason"] in POD_BIRTH_REASONS):
            out[key].add(e["uid"])
    return out


def count_restarts(incarnations: dict[str, set[str]]) -> dict[str, int]:
    """Restarts per pod name: its incarnations less the first."""
    return {name: max(len(uids) - 1, 0) for name, uids in incarnations.items()}


def never_placed(incarnations: dict[str, set[str]], pods: Sequence[dict], pod_events: Sequence[dict]) -> int:
    """Incarnations gone without ever being placed on a node: they ran none of the job's code.

    Such a pod was deleted while Pending, by no exit of its own, so no retry was spent on it. Seen on a
    loaded machine after a NoExecute eviction: the operator's first replacement was deleted before the
    scheduler placed it (no event names who), and the operator created a third.
    """
    current = {p["uid"] for p in pods}
    # Any sign of a node: the scheduler's placement, or the kubelet's work (an event can be dropped).
    placed = {e["uid"] for e in pod_events if e["reason"] in PLACED_REASONS and e.get("uid")}
    # Per replica, never more than its recreations: a first pod gone unplaced (a Pending worker a
    # cleanup deleted) is no restart, so it must not cancel another replica's.
    return sum(min(sum(1 for u in uids if u not in current and u not in placed), max(len(uids) - 1, 0))
               for uids in incarnations.values())


def restart_causes(job: dict, job_events: Sequence[dict], pod_events: Sequence[dict],
                   incarnations: dict[str, set[str]]) -> list[dict]:
    """Each distinct reason a pod of the job ended early: its exit code's meaning, an eviction, a preemption.

    Exits come from the operator's events on this job (by UID); losses from events on this job's pods (by UID).
    """
    name, uid = job["metadata"]["name"], job["metadata"].get("uid")
    prefix = name + "-"
    causes: dict[tuple[str, str], dict] = {}
    for e in job_events:
        if uid and e.get("uid") not in (None, uid):
            continue
        exited = backends.of(job).exit_event(e)
        if exited and exited[1] != 0:
            pod, code = exited
            cause = f"exit {code}: {contract.describe_exit_code(code)}"
            causes.setdefault((pod, cause), {"pod": pod, "cause": cause, "exit_code": code,
                                             "retried": contract.is_retryable(code)})
    own_uids = {u for uids in incarnations.values() for u in uids}
    created = parse_time(job["metadata"].get("creationTimestamp"))
    spec = backends.of(job).replica_names(job)
    for e in pod_events:
        pod = incarnation_key(spec, e["name"])
        # The taint-eviction controller names the pod without its UID: such an event is this job's
        # when it came after the job was created.
        ours = e.get("uid") in own_uids if e.get("uid") else (
            created is None or e.get("created") is None or e["created"] >= created)
        # The taint manager uses the same reason when it cancels an eviction.
        if (pod in incarnations and ours and e["reason"] in POD_LOSS_CAUSES
                and not (e.get("message") or "").startswith("Cancelling")):
            c = causes.setdefault((pod, POD_LOSS_CAUSES[e["reason"]]), {
                "pod": pod, "cause": POD_LOSS_CAUSES[e["reason"]], "reason": e["reason"], "retried": True,
                "uids": set(), "anonymous": 0})
            if e.get("uid"):
                c["uids"].add(e["uid"])
            else:
                c["anonymous"] += e.get("count") or 1
    out = []
    for c in causes.values():
        c["replica"] = c["pod"][len(prefix):] if c["pod"].startswith(prefix) else c["pod"]
        if "uids" in c:  # one loss per pod incarnation, however many events it got
            # Never more losses than the replica had pods: merged events cannot inflate it.
            c["count"] = min(len(c.pop("uids")) + c.pop("anonymous"), max(len(incarnations.get(c["pod"], ())), 1))
        out.append(c)
    return sorted(out, key=lambda c: (natural_key(c["replica"]), c["cause"]))


def retries_left(backoff: int | None, restarts: int, causes: Sequence[dict]) -> int | None:
    """The operator's budget (backoffLimit) less the restarts that were the pods' own exits, not losses.

    `restarts`: recreations of pods that ran (never_placed ones taken out by the caller).
    """
    if backoff is None:
        return None
    losses = sum(c.get("count", 0) for c in causes if c.get("reason") not in NOT_A_LOSS)
    return max(backoff - max(restarts - losses, 0), 0)


def newest_commit(lines: Iterable[str]) -> dict:
    """The newest committed step a runtime log (with --timestamps) names, and when: resumed from or preempted at."""
    out: dict[str, Any] = {"resumed_from": None, "preempted_at": None, "step": None, "at": None}
    for line in lines:
        stamp, _, text = line.partition(" ")
        at = parse_time(stamp)
        if at is None:
            text = line
        got = contract.parse_runtime_log([text])
        for key in ("resumed_from", "preempted_at"):
            if got[key] is not None:
                out[key] = got[key]
                if out["step"] is None or got[key] >= out["step"]:
                    out["step"], out["at"] = got[key], at
    return out


def exit_causes(pods: Sequence[dict]) -> list[dict]:
    """Each distinct non-zero exit of a pod still there, per replica (a TrainJob: no controller event records one)."""
    out: dict[tuple[str, str], dict] = {}
    for p in pods:
        code = p.get("exit_code")
        if code not in (None, 0):
            cause = f"exit {code}: {contract.describe_exit_code(code)}"
            c = out.setdefault((p["replica"], cause), {"pod": p["name"], "replica": p["replica"], "cause": cause,
                                                       "exit_code": code, "retried": contract.is_retryable(code),
                                                       "count": 0})
            c["count"] += 1
    return sorted(out.values(), key=lambda c: (natural_key(c["replica"]), c["cause"]))
