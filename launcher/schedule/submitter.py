"""One run of a schedule, in the pod its CronJob starts (`python -m launcher.submit`, launcher/submit.py).

Reads the schedule's stored spec (a ConfigMap), creates the run's PyTorchJob
with `launch`'s own builders, waits for it, and exits with its result (see
`SubmitExit`): the CronJob's history then shows each failed retrain as a
failed Job. The run is named after the pod's Job (SCHEDULE-MINUTES), so a pod
the Job retries finds its run again instead of starting a second one.

Settings come from the pod's environment (trainer.contract names them);
credentials are the pod's service account token (in-cluster config), or
KUBECONFIG when it runs elsewhere.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
from typing import Callable, Mapping

from launcher import backends
from launcher.errors import ClusterError, SpecError, one_line
from launcher.kueue import names as kueue
from launcher.schedule.spec import StoredSchedule, SubmitExit, stored_from_dict
from trainer import contract

log = logging.getLogger("kubetrain.submit")
DEFAULT_POLL_SECONDS = 10.0


def _setting(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise SpecError(f"{name} is not set; the CronJob sets it (launch schedule renders it)")
    return value


def read_stored(api, ns: str, schedule: str) -> StoredSchedule:
    from launcher.k8s.schedules import read_configmap
    from launcher.schedule.render import STORED_KEY, stored_configmap_name

    name = stored_configmap_name(schedule)
    cm = read_configmap(api, ns, name)
    if cm is None or STORED_KEY not in (cm.data or {}):
        raise SpecError(f"ConfigMap {ns}/{name} with the schedule's spec is missing; re-create the schedule")
    raw = (cm.binary_data or {}).get(contract.CODE_BUNDLE_NAME)
    try:
        doc = json.loads(cm.data[STORED_KEY])
    except ValueError as e:
        raise SpecError(f"ConfigMap {ns}/{name}: {STORED_KEY} is not JSON: {e}") from e
    return stored_from_dict(doc, code_data=base64.b64decode(raw) if raw else None, namespace=ns)


def submit_run(api, ns: str, schedule: str, run_name: str) -> bool:
    """Create the run's objects unless they exist; False when the run is skipped (another one is active)."""
    from launcher.k8s import jobs, preflight, schedules
    from launcher.k8s.kueue_preflight import managed_probe
    from launcher.schedule.render import run_to_objects

    existing = jobs.get_job(api, ns, run_name, required=False)
    if existing is not None:
        log.info("%s %s/%s exists (an earlier try of this Job created it); waiting for it", existing.get("kind"), ns,
                 run_name)
        return True
    others = schedules.active_runs(api, ns, schedule, own_run=run_name)
    if others:
        # The CronJob's own Forbid sees only the Jobs it made, and a run whose Job ended may still train.
        log.warning("skipped: run %s of schedule %s is still active (concurrencyPolicy Forbid)", others[0], schedule)
        return False
    stored = read_stored(api, ns, schedule)
    job = stored.schedule.job
    if job.total_gpus:
        room = preflight.namespace_quota_room(api, ns, job.resources.gpu_resource)
        if room is not None and room < job.total_gpus:
            raise SpecError(f"namespace {ns} has room for {room:g} {job.resources.gpu_resource} under its "
                            f"ResourceQuota, the run asks for {job.total_gpus}")
    objects = run_to_objects(stored, run_name=run_name, namespace=ns)
    backend = backends.of(objects[0])
    # With --queue, a dry run first: Kueue must still manage the kind, or the run would bypass its quota.
    jobs.create_job(api, ns, objects, probe=managed_probe(backend) if job.queue else None)
    warm = stored.schedule.warm_start_from
    log.info("created %s %s/%s: %d pod(s)%s%s", objects[0]["kind"], ns, run_name, job.nodes,
             f", warm start from {warm}" if warm else "", f", in LocalQueue {job.queue}" if job.queue else "")
    return True


#: Seconds between two nudges of a run past its deadline (see past_deadline).
NUDGE_EVERY_SECONDS = 15.0


def past_deadline(job: dict, now: float) -> bool:
    """True when the job has run longer than its runPolicy.activeDeadlineSeconds without finishing.

    The training operator v1.8 checks the deadline only when something makes it reconcile the
    job (its delayed re-check goes to a work queue that drops it), so a job whose pods never
    schedule stays Pending past its deadline for as long as nothing about it changes.

    Time suspended in a Kueue queue is not run time. Read in the operator v1.8.1
    (pkg/controller.v1/common/job.go ReconcileJobs, pytorchjob_controller.go UpdateJobStatus):
    a job suspended from creation returns before status.startTime is set, so it has none while
    queued; on resume the Suspended condition turns False and startTime is set to that moment,
    and PastActiveDeadline counts from startTime. So the deadline counts from admission, and
    restarts from each re-admission after a Kueue preemption. This check follows the same
    start time, and never nudges a suspended job: the operator does not check its deadline then.
    """
    import calendar

    backend = backends.of(job)
    if backend.suspended(job):
        return False
    deadline, started = backend.deadline(job)
    if not deadline or not started:
        return False
    start = calendar.timegm(time.strptime(started, "%Y-%m-%dT%H:%M:%SZ"))
    return now - start > float(deadline)


#: Seconds between two "waiting in queue" lines of a run Kueue has not admitted.
QUEUE_LOG_EVERY_SECONDS = 300.0


def queued_since(job: dict) -> float | None:
    """When the job last became suspended (its Suspended condition, else its creation); None when it runs."""
    import calendar

    if not backends.of(job).suspended(job):
        return None
    conds = [c for c in (job.get("status") or {}).get("conditions") or []
             if c.get("type") == "Suspended" and c.get("status") == "True" and c.get("lastTransitionTime")]
    stamp = conds[-1]["lastTransitionTime"] if conds else (job.get("metadata") or {}).get("creationTimestamp")
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) if stamp else None


def wait_for(api, ns: str, run_name: str, *, poll_seconds: float, sleep: Callable[[float], None],
             clock: Callable[[], float] = time.time) -> int:
    """Poll the run's training job until it finishes; its result as a SubmitExit."""
    from launcher.k8s import jobs

    last = None
    nudged_at = logged_queue_at = float("-inf")
    kind = backends.DEFAULT.KIND  # the run's, once read
    while True:
        job = jobs.get_job(api, ns, run_name, required=False)
        if job is None:
            log.error("%s %s/%s was deleted before it finished", kind, ns, run_name)
            return int(SubmitExit.JOB_FAILED)
        kind = job.get("kind") or kind
        state = jobs.state(job)
        if state != last:
            log.info("%s %s/%s: %s", kind, ns, run_name, state)
            last = state
        now = clock()
        since = queued_since(job) if state not in backends.FINISHED else None
        if since is not None and now - logged_queue_at >= QUEUE_LOG_EVERY_SECONDS:
            queue = ((job.get("metadata") or {}).get("labels") or {}).get(kueue.QUEUE_LABEL, "?")
            log.info("waiting in queue %s for %d s, not counted against --max-runtime (Kueue has not admitted "
                     "%s %s/%s yet)", queue, max(0, now - since), kind, ns, run_name)
            logged_queue_at = now
        if state not in backends.FINISHED and past_deadline(job, now) and now - nudged_at >= NUDGE_EVERY_SECONDS:
            log.info("%s %s/%s is past its deadline (--max-runtime): asking the operator to look again",
                     kind, ns, run_name)
            jobs.touch_job(api, ns, run_name)  # PyTorchJob only: a TrainJob's deadline is never past here
            nudged_at = now
        if state in backends.FINISHED:
            if state == "Failed":
                cond = next((c for c in reversed((job.get("status") or {}).get("conditions") or [])
                             if c.get("type") == "Failed"), {})
                log.error("the run failed: %s: %s (launch status %s -n %s)", cond.get("reason"), cond.get("message"),
                          run_name, ns)
                return int(SubmitExit.JOB_FAILED)
            return int(SubmitExit.OK)
        sleep(poll_seconds)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None,
         sleep: Callable[[float], None] = time.sleep) -> int:
    env = os.environ if env is None else env
    logging.basicConfig(level=logging.INFO, format="[kubetrain-submit] %(message)s", stream=sys.stdout)
    try:
        if argv:
            raise SpecError(f"python -m launcher.submit takes no arguments, got {argv}; it reads "
                            f"{contract.ENV_SCHEDULE}, {contract.ENV_RUN_NAME} and {contract.ENV_NAMESPACE}")
        schedule = _setting(env, contract.ENV_SCHEDULE)
        run_name = _setting(env, contract.ENV_RUN_NAME)
        ns = _setting(env, contract.ENV_NAMESPACE)
        parsed = contract.parse_scheduled_run_name(run_name)
        if parsed is None or parsed[0] != schedule:
            raise SpecError(f"run name {run_name!r} is not {schedule}-MINUTES: start runs from the CronJob or with "
                            f"`launch schedule trigger {schedule}`")
        try:
            poll = float(env.get(contract.ENV_SUBMIT_POLL_SECONDS) or DEFAULT_POLL_SECONDS)
        except ValueError:
            raise SpecError(f"{contract.ENV_SUBMIT_POLL_SECONDS} must be a number of seconds") from None
        from launcher.k8s.api import connect

        api = connect()
        if not submit_run(api, ns, schedule, run_name):
            return int(SubmitExit.OK)
        return wait_for(api, ns, run_name, poll_seconds=poll, sleep=sleep)
    except SpecError as e:
        log.error("error: %s", one_line(str(e)))
        return int(SubmitExit.BAD_SPEC)
    except ClusterError as e:
        log.error("error: %s (the Job retries this pod)", one_line(str(e)))
        return int(SubmitExit.CLUSTER)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
