"""A retraining schedule: what `launch schedule` was asked for, validated, and its stored form.

`ScheduleSpec` wraps the `JobSpec` of each run with the CronJob's settings.
The stored form (`stored_to_dict` / `stored_from_dict`) is what the schedule's
ConfigMap holds and the in-cluster submitter reads back each night: the
JobSpec itself, not rendered manifests, so each run is rendered by the same
builders as `launch` (with its own name and run id). No I/O here.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Any

from launcher.errors import SpecError
from launcher import backends
from launcher.job.render import CodeRef
from launcher.job.spec import JobSpec, Resources, Volume, check_dns_label
from trainer import contract

#: A run is named SCHEDULE-MINUTES (8 digits until the year 2160) and a job name has at most
#: 52 characters (a PyTorchJob's operator appends -master-0 / -worker-N to it).
MAX_NAME = 52 - 1 - 8
STORED_FORMAT = 1
#: JobSpec fields added after STORED_FORMAT 1 shipped: stored only when set (Kueue's --queue, --priority).
#: JobSpec fields newer than the stored format, and the value at which they are left out of it.
_NEWER_JOB_FIELDS: dict[str, Any] = {"queue": None, "workload_priority": None,
                                     "in_place_restarts": contract.DEFAULT_IN_PLACE_RESTARTS}
_CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,?-]+$")
_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


class SubmitExit(enum.IntEnum):
    """Exit codes of `python -m launcher.submit` (launcher/schedule/submitter.py), the CronJob's container.

    The Job's podFailurePolicy fails the Job at once on the permanent ones, so
    the CronJob history shows a failed retrain; the others are retried.
    """

    #: The run's job succeeded (or the run was skipped: another is still active).
    OK = 0
    #: The run's job failed, or was deleted before it finished.
    JOB_FAILED = 1
    #: The stored spec or the pod's environment is unusable; a retry fails the same way.
    BAD_SPEC = 2
    #: The API server refused or could not be reached; the Job retries the pod.
    CLUSTER = 3

    @classmethod
    def permanent(cls) -> tuple[int, ...]:
        return (int(cls.JOB_FAILED), int(cls.BAD_SPEC))


def check_cron(cron: str) -> str:
    """The five-field cron syntax the CronJob controller accepts, or one of its @macros."""
    text = str(cron).strip()
    if text in _CRON_MACROS:
        return text
    fields = text.split()
    if len(fields) != 5 or not all(_CRON_FIELD_RE.match(f) for f in fields):
        raise SpecError(f"--cron {cron!r}: expected five fields, minute hour day-of-month month day-of-week "
                        "(e.g. \"0 3 * * *\"), or @daily/@hourly/@weekly/@monthly/@yearly")
    return " ".join(fields)


def check_time_zone(tz: str) -> str:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SpecError(f"--time-zone {tz!r} is not an IANA time zone (e.g. Europe/Berlin, UTC)") from None
    return tz


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScheduleSpec:
    """One retraining schedule: a CronJob whose runs submit `job` as a PyTorchJob or TrainJob (`backend`)."""

    name: str
    cron: str
    job: JobSpec
    #: IANA zone for `cron` (CronJob .spec.timeZone); None: the controller's zone (UTC on managed clusters).
    time_zone: str | None = None
    #: None, WARM_START_LATEST (the previous run of this schedule), or a run folder URI.
    warm_start_from: str | None = None
    warm_start_optimizer: bool = False
    #: A run that could not start within this many seconds of its time is skipped (controller down, ...).
    starting_deadline_seconds: int = 3600
    successful_history: int = 3
    failed_history: int = 3
    #: The kind each run creates (launcher/backends/): decided when the schedule is made, not per run.
    backend: str = "pytorchjob"

    def __post_init__(self) -> None:
        check_dns_label(self.name, "--name", max_len=MAX_NAME)
        if self.backend not in backends.BACKENDS:
            raise SpecError(f"schedule backend {self.backend!r}: choose {', '.join(backends.BACKENDS)}")
        object.__setattr__(self, "cron", check_cron(self.cron))
        if self.time_zone is not None:
            check_time_zone(self.time_zone)
        w = self.warm_start_from
        if w is not None and w != contract.WARM_START_LATEST and "://" not in str(w) and not str(w).startswith("/"):
            raise SpecError(f"--warm-start-from {w!r}: use '{contract.WARM_START_LATEST}' or a run folder URI "
                            "(s3://bucket/ckpts/RUN)")
        if self.warm_start_optimizer and w is None:
            raise SpecError("--warm-start-optimizer needs --warm-start-from")
        if not isinstance(self.starting_deadline_seconds, int) or self.starting_deadline_seconds < 10:
            # The controller checks every 10 s; a shorter deadline can miss every run.
            raise SpecError(f"--starting-deadline must be >= 10 seconds, got {self.starting_deadline_seconds!r}")
        for flag, n in (("--keep-history", self.successful_history), ("--keep-history", self.failed_history)):
            if not isinstance(n, int) or n < 0 or n > 100:
                raise SpecError(f"{flag} must be between 0 and 100, got {n!r}")


# --- the stored form: JSON in the schedule's ConfigMap -------------------------------


def job_spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def job_spec_from_dict(doc: dict[str, Any]) -> JobSpec:
    """The inverse of job_spec_to_dict; the dataclasses validate it all again."""
    d = dict(doc)
    d["resources"] = Resources(**d.get("resources", {}))
    d["volumes"] = tuple(Volume(**v) for v in d.get("volumes", ()))
    d["env"] = tuple((str(k), str(v)) for k, v in d.get("env", ()))
    for key in ("script_args", "secret_env"):
        d[key] = tuple(d.get(key, ()))
    return JobSpec(**d)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoredSchedule:
    """What a run needs, read back from the schedule's ConfigMap."""

    schedule: ScheduleSpec
    image: str
    #: The code bundle: its bytes are in the same ConfigMap unless `code.uri` names the object store.
    code: CodeRef


def stored_to_dict(schedule: ScheduleSpec, *, image: str, code: CodeRef) -> dict[str, Any]:
    """Without the namespace: a run goes where its schedule lives (the same stored spec in any namespace)."""
    sched = {f.name: getattr(schedule, f.name) for f in dataclasses.fields(schedule) if f.name != "job"}
    if schedule.backend == ScheduleSpec.__dataclass_fields__["backend"].default:
        del sched["backend"]  # stored as before backends were chosen: submitters of that time read it too
    job = {k: v for k, v in job_spec_to_dict(schedule.job).items() if k != "namespace"}
    for key, unset in _NEWER_JOB_FIELDS.items():
        if job[key] == unset:
            del job[key]  # as before they existed: submitters of that time read what does not use them
    return {"format": STORED_FORMAT, "schedule": sched, "job": job, "image": image,
            "code": {"sha256": code.sha256, "entrypoint": code.entrypoint, "uri": code.uri}}


def stored_from_dict(doc: Any, *, code_data: bytes | None, namespace: str = "default") -> StoredSchedule:
    """SpecError when the stored document is not one this launcher wrote; its runs go to `namespace`."""
    if not isinstance(doc, dict) or doc.get("format") != STORED_FORMAT:
        raise SpecError(f"stored schedule: unknown format {doc.get('format') if isinstance(doc, dict) else doc!r}; "
                        f"expected {STORED_FORMAT} (re-create the schedule with this launcher)")
    try:
        job = job_spec_from_dict({**doc["job"], "namespace": namespace})
        schedule = ScheduleSpec(job=job, **doc["schedule"])
        code = doc["code"]
        ref = CodeRef(sha256=code["sha256"], entrypoint=code["entrypoint"],
                      configmap_data=None if code.get("uri") else code_data, uri=code.get("uri"))
    except (KeyError, TypeError) as e:
        raise SpecError(f"stored schedule: malformed ({type(e).__name__}: {e})") from e
    if ref.uri is None and ref.configmap_data is None:
        raise SpecError("stored schedule: the code bundle is missing from its ConfigMap")
    return StoredSchedule(schedule=schedule, image=str(doc["image"]), code=ref)
