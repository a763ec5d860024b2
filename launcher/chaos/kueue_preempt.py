"""`launch chaos JOB --kueue-preempt`: a short-lived higher-priority Workload preempts the job; how it came back.

It submits a bare Workload (launcher/chaos/kueue_plan.py) in the job's LocalQueue, waits for Kueue
to evict the job for it, removes it again (always: also on an error, Ctrl-C or SIGTERM), then
waits for Kueue to re-admit the job, for its new pods to run and for the step they resumed from
(contract.LOG_RESUMED in their logs, as the other cluster faults read it).
"""

from __future__ import annotations

import secrets
import signal
import time
from typing import Any, Callable

from launcher import backends
from launcher.chaos import kueue_plan as plan
from launcher.errors import ClusterError, SpecError
from launcher.k8s import kueue as k8s_kueue
from launcher.k8s.api import Api
from launcher.k8s.jobs import get_job, job_pods
from launcher.k8s.jobs import state as job_state
from launcher.chaos.cluster import resumed_from
from launcher.status import admission as kueue


def _job_workload(api: Api, ns: str, job: dict) -> dict | None:
    return k8s_kueue.newest(k8s_kueue.workloads(api, ns, job["metadata"].get("uid")))


def _until(what: Callable[[], Any], deadline: float, every: float = 1.0) -> Any:
    """what()'s first truthy answer before the deadline, else None."""
    while True:
        got = what()
        if got or time.monotonic() >= deadline:
            return got
        time.sleep(every)


def _prepare(api: Api, ns: str, job: dict) -> tuple[dict, dict]:
    """(the job's Workload, the preemptor to create); SpecError (exit 2) where Kueue would not preempt for it."""
    name = job["metadata"]["name"]
    queue = kueue.queue_name(job)
    if queue is None:
        raise SpecError(f"{ns}/{name} has no {kueue.QUEUE_LABEL} label: it is not behind Kueue, "
                        "so --kueue-preempt has nothing to preempt")
    workload = _job_workload(api, ns, job)
    a = kueue.summarize(job, workload)
    if workload is None or a.state != "Admitted":
        raise SpecError(f"{ns}/{name} is not admitted by Kueue ({kueue.short_state(a)}): "
                        "--kueue-preempt needs an admitted job")
    cluster_queue = k8s_kueue.cluster_queue(api, a.cluster_queue)
    plan.check_policy(cluster_queue, a.cluster_queue)
    priority = int((workload.get("spec") or {}).get("priority") or 0)
    klass = plan.higher_class(k8s_kueue.priority_classes(api), priority)
    if klass is None:
        raise SpecError(f"no WorkloadPriorityClass has a value above the job's priority {priority}: create one "
                        f"(kind: WorkloadPriorityClass, apiVersion: {kueue.GROUP}/{kueue.VERSION}, value > {priority})")
    wanted = plan.take(workload, cluster_queue)
    if wanted is None:
        raise SpecError(f"{ns}/{name} holds no GPUs or CPUs of ClusterQueue {a.cluster_queue}'s quota: "
                        "nothing for a preemptor to take")
    return workload, plan.preemptor(name, ns, queue, wanted[0], wanted[1], klass[0], klass[1], secrets.token_hex(3))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: the preemptor is removed either way


def run_kueue_preempt(api: Api, ns: str, name: str, wait_s: float) -> int:
    job = get_job(api, ns, name)
    if job_state(job) in backends.FINISHED:
        raise SpecError(f"{backends.of(job).KIND} {ns}/{name} has {job_state(job).lower()}: chaos needs a running job")
    workload, body = _prepare(api, ns, job)
    ps = body["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"]["requests"]
    (resource, total), = ps.items()
    print(f"launch chaos: {ns}/{name} (Workload {workload['metadata']['name']}, priority "
          f"{(workload.get('spec') or {}).get('priority') or 0}); submitting Workload {body['metadata']['name']} "
          f"at priority {body['spec']['priority']} ({body['spec']['priorityClassRef']['name']}) asking for "
          f"{total} {resource} in LocalQueue {body['spec']['queueName']}", flush=True)
    before = {p.metadata.uid for p in job_pods(api, ns, name, backend=backends.of(job))}
    previous = signal.signal(signal.SIGTERM, _interrupt)
    start = time.monotonic()
    deadline = start + wait_s
    report: dict[str, Any] = {}
    created: dict | None = None
    try:
        created = k8s_kueue.create_workload(api, ns, body)
        uid = created["metadata"]["uid"]
        evicted = _until(lambda: (w := _job_workload(api, ns, job)) is not None and plan.evicted_by(w, uid) and w,
                         deadline)
        if not evicted:
            print(f"not evicted after {wait_s:g}s: Kueue did not preempt the job for Workload "
                  f"{body['metadata']['name']}")
            return 1
        report["evicted_s"] = time.monotonic() - start
        e = next((x for x in kueue.evictions(evicted) if uid in x.message), None)
        print(f"evicted after {report['evicted_s']:.1f}s: {e.cause if e else 'by the preemptor'}", flush=True)
        # Let the preemptor be admitted (the job's pods gone, its quota released) before it goes: a real preemptor's life.
        admitted = _until(lambda: kueue.summarize(job, k8s_kueue.read_workload(api, ns, body["metadata"]["name"])
                                                  ).state == "Admitted", min(deadline, time.monotonic() + 120))
        print("preemptor " + ("admitted" if admitted else "not admitted (removing it anyway)")
              + f" after {time.monotonic() - start:.1f}s", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:  # also when the create's answer was lost (created None): it may exist all the same
            k8s_kueue.delete_workload(api, ns, body["metadata"]["name"])
            if created is not None:
                print(f"removed Workload {body['metadata']['name']}", flush=True)
        except ClusterError as e:
            print(f"launch chaos: could not remove Workload {body['metadata']['name']}: {e}; delete it by hand")
    return _recovery(api, ns, job, before, start, deadline)


def _recovery(api: Api, ns: str, job: dict, before: set[str], start: float, deadline: float) -> int:
    """Re-admission, the new pods running, and the step they resumed from; 0 when the job came back."""
    name = job["metadata"]["name"]
    readmitted = _until(lambda: kueue.summarize(job, _job_workload(api, ns, job)).state == "Admitted", deadline)
    if not readmitted:
        print(f"not re-admitted within the wait ({kueue.short_state(kueue.summarize(job, _job_workload(api, ns, job)))})")
        return 1
    print(f"re-admitted after {time.monotonic() - start:.1f}s", flush=True)
    backend = backends.of(job)

    def running() -> list[Any]:
        pods = [p for p in job_pods(api, ns, name, backend=backend) if p.metadata.uid not in before
                and p.status.phase == "Running" and not p.metadata.deletion_timestamp]
        return pods if len(pods) >= backend.min_pods(get_job(api, ns, name)) else []

    pods = _until(running, deadline)
    if not pods:
        print("its new pods were not all running within the wait")
        return 1
    print(f"running again after {time.monotonic() - start:.1f}s", flush=True)

    def resumed() -> int | None:
        steps = [resumed_from(api, ns, p) for p in pods]
        return min(steps) if steps and all(s is not None for s in steps) else None

    try:
        got = _until(lambda: (s := resumed()) is not None and (s,), deadline, every=2.0)  # step 0 is an answer too
        step = got[0] if got else None
    except ClusterError as e:
        print(f"resume step unknown: its log cannot be read ({e})")
        return 0
    print(f"resumed from step {step}" if step is not None else "its log names no resume step yet", flush=True)
    print(f"`launch status {name} -n {ns}` shows the preemption in its Kueue block and restart ledger")
    return 0
