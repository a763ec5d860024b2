"""Schedules on the cluster: the submitter's RBAC, CronJobs, their Jobs and stored spec."""

from __future__ import annotations

from typing import Any

from launcher import backends
from launcher.errors import SpecError
from launcher.k8s.api import Api, call, create, create_all, delete, raw, read
from launcher.k8s.jobs import list_all_jobs, state
from trainer import contract

#: Shared by every schedule of a namespace: an existing one is brought up to date, never deleted by a rollback.
SHARED_KINDS = ("ServiceAccount", "Role", "RoleBinding")


def create_schedule(api: Api, ns: str, objects: list[dict]) -> None:
    """The submitter's RBAC (created or updated), the CronJob, then its stored spec owned by it; all or none."""

    def conflict(obj: dict) -> str:
        kind, name = obj["kind"], obj["metadata"]["name"]
        schedule = obj["metadata"]["labels"].get(contract.LABEL_SCHEDULE, name)
        return (f"a {kind} {name!r} exists in namespace {ns} already; pick another --name, "
                f"or `launch schedule delete {schedule} -n {ns}` first")

    create_all(api, ns, objects, owner_kind="CronJob", conflict=conflict, shared_kinds=SHARED_KINDS)


def get_cronjob(api: Api, ns: str, name: str) -> dict:
    got = read(api, ns, "CronJob", name)
    if got is None:
        raise SpecError(f"no schedule {name!r} in namespace {ns} (see `launch schedule list -n {ns}`)")
    return api.core.api_client.sanitize_for_serialization(got)


def create_run(api: Api, ns: str, job: dict) -> None:
    """A run of a schedule: the batch Job its CronJob would have made."""
    create(api, ns, job)


def _runs(api: Api, ns: str, selector: str) -> list[dict]:
    """The schedules' Jobs (one per run, its submitter) as plain JSON."""
    return call("listing Jobs", lambda: raw(api.batch.list_namespaced_job(
        ns, label_selector=selector, _preload_content=False)))["items"]


def active_runs(api: Api, ns: str, schedule: str, *, own_run: str | None = None) -> list[str]:
    """Runs of `schedule` still going, by name: unfinished training jobs, and unfinished Jobs (their submitters).

    The CronJob controller does not count a Job made by `launch schedule trigger` (or kubectl) as
    active, so its own Forbid can start a run beside one; the submitter of run `own_run` asks here
    too. Of two submitters started together the older Job goes on: with `own_run`, only Jobs
    created before it count.
    """
    selector = f"{contract.LABEL_SCHEDULE}={schedule}"
    names = {j["metadata"]["name"] for j in list_all_jobs(api, ns, selector=selector)
             if state(j) not in backends.FINISHED}
    runs = _runs(api, ns, selector)
    own = next((j for j in runs if j["metadata"]["name"] == own_run), None)

    def created(j: dict) -> tuple[str, str]:
        # RFC 3339 in UTC, to the second: as strings they sort as the times do.
        return j["metadata"].get("creationTimestamp") or "", j["metadata"]["name"]

    names |= {j["metadata"]["name"] for j in runs
              if state(j, "Job") not in backends.FINISHED and (own is None or created(j) < created(own))}
    names.discard(own_run)
    return sorted(names)


def list_schedules(api: Api, ns: str) -> list[dict]:
    """Each schedule with its last runs, from the CronJobs and the Jobs they started."""
    selector = f"{contract.LABEL_MANAGED_BY}={contract.MANAGED_BY}"
    cronjobs = call("listing CronJobs", lambda: api.batch.list_namespaced_cron_job(ns, label_selector=selector)).items
    runs = _runs(api, ns, selector)
    rows = []
    for cj in sorted(cronjobs, key=lambda c: c.metadata.name):
        name = cj.metadata.name
        of_this = sorted((j for j in runs if (j["metadata"].get("labels") or {}).get(contract.LABEL_SCHEDULE) == name),
                         key=lambda j: j["metadata"]["name"])
        rows.append({"name": name, "schedule": cj.spec.schedule, "time_zone": cj.spec.time_zone,
                     "suspended": bool(cj.spec.suspend),
                     "last_schedule": cj.status.last_schedule_time.isoformat() if cj.status and
                     cj.status.last_schedule_time else None,
                     "runs": [{"name": j["metadata"]["name"], "state": state(j, "Job")} for j in of_this]})
    return rows


def delete_schedule(api: Api, ns: str, name: str, *, stored: str) -> None:
    """The CronJob; its stored spec (the ConfigMap `stored`) and Jobs go with it (owned). Runs started keep running."""
    get_cronjob(api, ns, name)
    delete(api, ns, "CronJob", name)
    # Where no garbage collector runs the owned ConfigMap would stay: delete it by name too.
    delete(api, ns, "ConfigMap", stored)


def read_configmap(api: Api, ns: str, name: str) -> Any:
    """The ConfigMap, or None when there is none."""
    return read(api, ns, "ConfigMap", name)
