"""`launch chaos JOB`: faults to one running job (PyTorchJob or TrainJob) on any cluster, and how it reacted.

It touches only the job's own pods (and, for --drain-node, the node under one of
them, which it cordons and uncordons again). After each fault it watches the
controller replace the pod and reads the step the runtime resumed from in the new
pod's log (contract.LOG_RESUMED).

A replacement is found by replica (`master-0`, `worker-1`, `node-1`) and a new UID,
never by pod name: the training operator recreates a PyTorchJob's pod under the same
name, but a TrainJob's pods belong to Jobs, whose controller gives every pod a new
random suffix (and a TrainJob's other nodes are often replaced too: a deleted pod's
ranks and theirs agree on a stop step and all exit 143).
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

from launcher import backends
from launcher.errors import ClusterError, SpecError
from launcher.k8s import faults
from launcher.k8s.api import Api
from launcher.k8s.jobs import get_job, job_pods, pod_backend, pod_container, replica_id
from launcher.k8s.jobs import state as job_state
from launcher.k8s.status import log_tail, read_pods_and_events
from launcher.status.build import pod_recreations
from launcher.status.counting import newest_commit

FINISHED = backends.FINISHED


@dataclasses.dataclass(frozen=True)
class ChaosAction:
    kill_pod: str | None = None  # random | master | worker-N
    evict_grace: float | None = None
    drain_node: bool = False
    every_s: float = 120.0
    count: int = 1
    wait_s: float = 600.0


@dataclasses.dataclass
class FaultResult:
    n: int
    what: str
    pods: list[str]
    uids: dict[str, str]  # pod name -> UID of each pod the fault removed
    replicas: dict[str, str]  # pod name -> its replica (`worker-1`): what a replacement has in common with it
    at: float
    refused: str | None = None
    recreated_s: float | None = None
    running_s: float | None = None
    resumed_from: int | None = None
    note: str = ""


def pick_pod(pods: list[Any], which: str, rng: random.Random) -> Any | None:
    """The pod `--kill-pod random|master|worker-N|node-N` names among the job's live pods.

    `master` is the rank-0 pod of either kind: a PyTorchJob's master-0, a TrainJob's node-0.
    """
    if not pods:
        return None
    if which == "random":
        return rng.choice(pods)
    label = pod_backend(_labels(pods[0])).FIRST_REPLICA if which == "master" else which
    return next((p for p in pods if replica_id(p) == label), None)


def _labels(pod: Any) -> dict[str, str]:
    return pod.metadata.labels or {}


def _removed(n: int, what: str, victims: list[Any], refused: str | None = None) -> FaultResult:
    """The result of fault n, which removed `victims` just now."""
    return FaultResult(n, what, [p.metadata.name for p in victims], {p.metadata.name: p.metadata.uid for p in victims},
                       {p.metadata.name: replica_id(p) for p in victims}, time.monotonic(), refused=refused)


def _live(pods: list[Any]) -> list[Any]:
    return [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]


def _wait_all_running(api: Api, ns: str, name: str, timeout: float) -> tuple[str, list[Any]]:
    """('running', pods) once every replica runs; (state, []) if the job finished; ('timeout', live pods)."""
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(api, ns, name)
        state = job_state(job)
        if state in FINISHED:
            return state, []
        live = _live(job_pods(api, ns, name, backend=backends.of(job)))
        if len(live) >= backends.of(job).min_pods(job):
            return "running", live
        if time.monotonic() >= deadline:
            return "timeout", live
        time.sleep(1)


def inject_fault(api: Api, ns: str, action: ChaosAction, pods: list[Any], n: int,
            rng: random.Random, cordoned: list[str]) -> FaultResult:
    if action.kill_pod:
        pod = pick_pod(pods, action.kill_pod, rng)
        if pod is None:
            raise SpecError(f"--kill-pod {action.kill_pod}: the job has no such running pod "
                            f"(it has {', '.join(replica_id(p) for p in pods)})")
        faults.delete_pod(api, ns, pod.metadata.name, grace_seconds=0)
        return _removed(n, f"deleted {replica_id(pod)} ({pod.metadata.name}) on {pod.spec.node_name}, grace 0",
                        [pod])
    if action.evict_grace is not None:
        pod = rng.choice(pods)
        grace = int(round(action.evict_grace))
        refused = faults.evict_pod(api, ns, pod.metadata.name, grace_seconds=grace)
        return _removed(n, f"evicted {replica_id(pod)} ({pod.metadata.name}) on {pod.spec.node_name}, "
                           f"grace {grace}s", [pod], refused)
    node = rng.choice(pods).spec.node_name
    faults.set_unschedulable(api, node, True)
    cordoned.append(node)
    victims = [p for p in pods if p.spec.node_name == node]
    refusals = [r for r in (faults.evict_pod(api, ns, p.metadata.name, grace_seconds=None) for p in victims) if r]
    return _removed(n, f"drained node {node}: cordoned, evicted {', '.join(replica_id(p) for p in victims)}",
                    victims, "; ".join(refusals) or None)


def _watch(api: Api, ns: str, name: str, r: FaultResult, timeout: float) -> None:
    """Wait for the controller to replace the pods the fault removed and for them to run; read their logs."""
    deadline = r.at + timeout
    wanted, gone = set(r.replicas.values()), set(r.uids.values())
    replaced: dict[str, Any] = {}  # replica -> its running replacement
    while time.monotonic() < deadline and len(replaced) < len(wanted):
        job = get_job(api, ns, name)
        if job_state(job) in FINISHED:
            r.note = "the job finished"
            return
        for p in job_pods(api, ns, name, backend=backends.of(job)):
            if replica_id(p) in wanted and p.metadata.uid not in gone and not p.metadata.deletion_timestamp:
                if r.recreated_s is None:
                    r.recreated_s = time.monotonic() - r.at
                if p.status.phase == "Running":
                    replaced[replica_id(p)] = p
        time.sleep(0.5)
    if len(replaced) < len(wanted):
        r.note = f"not running again after {timeout:.0f}s"
        return
    r.running_s = time.monotonic() - r.at
    # The runtime logs its resume step right after restore, and restore waits for the rendezvous:
    # when the fault also stopped the other pods, for theirs to be recreated and started too
    # (minutes on a busy node), so this waits as long as --wait allows, not a fixed minute.
    while time.monotonic() < deadline:
        try:
            steps = [resumed_from(api, ns, p) for p in replaced.values()]
        except ClusterError as e:
            r.note = f"resume step unknown: its log cannot be read ({e})"
            return
        if all(s is not None for s in steps):
            r.resumed_from = min(s for s in steps if s is not None)
            return
        time.sleep(2)
    r.note = "its log names no resume step yet"


def resumed_from(api: Api, ns: str, pod: Any) -> int | None:
    """The step a (typed) pod's runtime resumed from, by its log; None when it logged none yet."""
    return newest_commit(log_tail(api, ns, pod.metadata.name, pod_container(pod)))["resumed_from"]


def recreations(api: Api, ns: str, name: str) -> int:
    """How often the job's pods were created again, so far (launcher/status/counting.py)."""
    job = get_job(api, ns, name)
    return pod_recreations(job, *read_pods_and_events(api, ns, job))


def fault_line(r: FaultResult, count: int) -> str:
    head = f"fault {r.n}/{count}: {r.what}"
    if r.refused:
        return f"{head}\n  refused: {r.refused}"
    parts = []
    if r.recreated_s is not None:
        parts.append(f"recreated after {r.recreated_s:.1f}s")
    if r.running_s is not None:
        parts.append(f"running after {r.running_s:.1f}s")
    if r.resumed_from is not None:
        parts.append(f"resumed from step {r.resumed_from}")
    if r.note:
        parts.append(r.note)
    return f"{head}\n  " + ("; ".join(parts) or "no reaction seen")


def run_cluster_chaos(api: Api, ns: str, name: str, action: ChaosAction, *, seed: int | None) -> int:
    seed = seed if seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    job = get_job(api, ns, name)
    state = job_state(job)
    if state in FINISHED:
        raise SpecError(f"{backends.of(job).KIND} {ns}/{name} has {state.lower()}: chaos needs a running job")
    restarts_before = recreations(api, ns, name)
    print(f"launch chaos: {ns}/{name} ({state}, {backends.of(job).min_pods(job)} pod(s)); {action.count} fault(s), "
          f"{action.every_s:g}s apart; seed {seed}", flush=True)
    cordoned: list[str] = []
    results: list[FaultResult] = []
    try:
        for n in range(1, action.count + 1):
            if results:
                time.sleep(max(0.0, results[-1].at + action.every_s - time.monotonic()))
            state, pods = _wait_all_running(api, ns, name, action.wait_s)
            if state != "running":
                print(f"stopping before fault {n}: " + (f"the job {state.lower()}" if state in FINISHED else
                      f"its pods were not all running after {action.wait_s:g}s"))
                break
            r = inject_fault(api, ns, action, pods, n, rng, cordoned)
            results.append(r)
            if not r.refused:
                _watch(api, ns, name, r, action.every_s if n < action.count else action.wait_s)
            print(fault_line(r, action.count), flush=True)
    finally:
        for node in cordoned:
            faults.set_unschedulable(api, node, False)
            print(f"uncordoned node {node}")
    job = get_job(api, ns, name)
    state = job_state(job)
    restarts = recreations(api, ns, name)
    print(f"{ns}/{name}: {state}; pods recreated {restarts - restarts_before} time(s) during chaos "
          f"(`launch status {name} -n {ns}` has the causes and the retry budget)")
    recovered = bool(results) and state != "Failed" and all(
        r.refused is None and (r.running_s is not None or r.note == "the job finished") for r in results)
    return 0 if recovered else 1
