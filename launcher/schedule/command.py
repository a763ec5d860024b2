"""`launch schedule`: retrain on a cron schedule, each run a PyTorchJob or TrainJob submitted in-cluster.

    launch schedule train.py --cron "0 3 * * *" --time-zone Europe/Berlin --gpus 8 --checkpoint s3://b/ckpts \\
        --warm-start-from latest                      # the same flags as `launch`
    launch schedule train.py --cron @daily ... --dry-run -o yaml   # every object, nothing created
    launch schedule train.py --cron @daily ... --chart-values      # a values file for k8s/chart
    launch schedule list | delete NAME | trigger NAME

It creates the submitter's ServiceAccount, Role and RoleBinding (once per
namespace), a CronJob (concurrencyPolicy Forbid) and a ConfigMap holding the
job spec and the code. Each run's pod runs `python -m launcher.submit`, which
creates the job NAME-MINUTES (of the schedule's --backend), waits for it and exits with its result.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any, Mapping

from launcher import backends
from launcher.commandline import (Parser, add_target_flags, context, field_default, namespace, print_doc,
                                  print_objects, split_script_args)
from launcher.errors import ClusterError, SpecError
from trainer import contract

VERBS = ("list", "delete", "trigger")


def build_parser() -> argparse.ArgumentParser:
    from launcher.job.command import add_job_flags
    from launcher.schedule.spec import MAX_NAME, ScheduleSpec

    p = Parser(prog="launch schedule", description="Retrain on a cron schedule: a CronJob whose pod submits SCRIPT "
               "as a PyTorchJob or TrainJob (the same flags as `launch`, --backend too), waits for it and exits with its result. Script "
               "arguments go after `--`.", epilog="other verbs: launch schedule list | delete NAME | trigger NAME  "
               "(each has --help)", formatter_class=argparse.RawDescriptionHelpFormatter)
    # `launch`'s own job flags, so they cannot drift. --local is there but hidden: it is refused
    # with the reason (a schedule runs on the cluster), not as an unknown flag.
    add_job_flags(p, name_help=f"schedule name, at most {MAX_NAME} characters (default: SCRIPT); "
                  "each run is NAME-MINUTES (the Unix minute it was started for)", local_help=argparse.SUPPRESS)
    g = p.add_argument_group("schedule")
    g.add_argument("--cron", required=True, help="when to run, cron syntax: \"0 3 * * *\" (03:00 daily), @daily, ...")
    g.add_argument("--time-zone", default=None, help="IANA zone for --cron, e.g. Europe/Berlin "
                   "(default: the controller's, UTC on managed clusters)")
    g.add_argument("--warm-start-from", default=None, metavar="latest|URI",
                   help=f"initialise each run from the newest committed weights of the previous run of this schedule "
                        f"('{contract.WARM_START_LATEST}') or of a run folder URI")
    g.add_argument("--warm-start-optimizer", action="store_true", help="restore the optimizer too (default: fresh)")
    g.add_argument("--starting-deadline", type=int, default=None, help="skip a run that could not start this many "
                   f"seconds after its time (default {field_default(ScheduleSpec, 'starting_deadline_seconds')})")
    g.add_argument("--keep-history", type=int, default=None, help="finished runs (Jobs) kept, of each outcome "
                   f"(default {field_default(ScheduleSpec, 'successful_history')})")
    g.add_argument("--backend", default=None, help="the kind each run creates: pytorchjob (default), trainjob, "
                   "or auto (what the cluster serves now; see `launch --help`). Config key: backend")
    g.add_argument("--chart-values", action="store_true",
                   help="print a values file for the Helm chart in k8s/chart holding this schedule; create nothing")
    return p


def build_verb_parser(verb: str) -> argparse.ArgumentParser:
    p = Parser(prog=f"launch schedule {verb}", description={
        "list": "Schedules in the namespace, with their runs (Jobs) and how each ended.",
        "delete": "Delete the schedule (its CronJob and stored spec); runs already started keep running.",
        "trigger": "Start a run now, as the CronJob would; skipped (exit 1) while another run of it is active.",
    }[verb])
    if verb != "list":
        p.add_argument("schedule", help="the schedule's name")
    if verb == "list":
        p.add_argument("-o", "--output", choices=("text", "json", "yaml", "wide"), default="text",
                       help="text (default: the three newest runs), json, yaml, or wide (every run)")
    add_target_flags(p)
    return p


def default_schedule_name(script: str) -> str:
    from launcher.schedule.spec import MAX_NAME

    stem = re.sub(r"[^a-z0-9-]+", "-", os.path.splitext(os.path.basename(script))[0].lower()).strip("-")
    return stem[:MAX_NAME].strip("-") or "retrain"


def chart_values(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Values for k8s/chart holding this schedule: its CronJob and stored spec, namespaced by the release."""
    keep = [dict(o, metadata={k: v for k, v in o["metadata"].items() if k != "namespace"})
            for o in objects if o["kind"] in ("CronJob", "ConfigMap")]
    return {"schedules": {name: {"objects": keep}}}


def create(argv: list[str], env: Mapping[str, str]) -> int:
    from launcher.config import project_defaults
    from launcher.job.command import build_spec, pack_code
    from launcher.job.spec import DEFAULT_IMAGE
    from launcher.schedule.render import schedule_to_objects
    from launcher.schedule.spec import ScheduleSpec

    flags, script_args = split_script_args(argv)
    args = build_parser().parse_args(flags)
    if args.local:
        raise SpecError("--local runs once, here: use `launch SCRIPT --local`; a schedule runs on the cluster")
    defaults = project_defaults(env)
    job = build_spec(args, script_args, defaults)
    name = args.name or default_schedule_name(job.script)
    given = {k: v for k, v in {"time_zone": args.time_zone, "warm_start_from": args.warm_start_from,
                                "starting_deadline_seconds": args.starting_deadline,
                                "successful_history": args.keep_history, "failed_history": args.keep_history}.items()
             if v is not None}
    from launcher.job.command import choose_backend
    from launcher.k8s import api as k8s

    api_box: list = []

    def connect():  # once, when `auto` asks the cluster; --dry-run and --chart-values never connect
        if not api_box:
            api_box.append(k8s.connect(context=context(args, defaults)))
        return api_box[0]

    args.dry_run = args.dry_run or args.chart_values
    backend = choose_backend(args, defaults, connect)
    schedule = ScheduleSpec(name=name, cron=args.cron, job=job, warm_start_optimizer=args.warm_start_optimizer,
                            backend=next(k for k, b in backends.BACKENDS.items() if b is backend), **given)
    bundle, code = pack_code(args, defaults, job.script, name)
    objects = schedule_to_objects(schedule, image=job.image or DEFAULT_IMAGE, code=code)
    if args.chart_values:
        import yaml

        print(yaml.safe_dump(chart_values(objects, name), sort_keys=True), end="")
        return 0
    if args.dry_run:
        print_objects(objects, args.output)
        return 0
    from launcher.job import bundle as shipping
    from launcher.k8s.preflight import preflight
    from launcher.k8s.schedules import create_schedule

    api = connect()
    if job.queue:
        from launcher.job.render import spec_to_objects
        from launcher.k8s.kueue_preflight import probe_ahead

        # One run's job as the submitter will render it: Kueue's checks need its pod sets, and the
        # dry run whether Kueue manages its kind (the submitter probes again before each run).
        run = spec_to_objects(job, name=f"{name}-0", code=code, image=job.image or DEFAULT_IMAGE, backend=backend)
        preflight(api, job, backend, run[0])
        probe_ahead(api, job.namespace, run, backend)
    else:
        preflight(api, job, backend)
    shipping.shipped_then_created(code, bundle.data, lambda: create_schedule(api, job.namespace, objects))
    ns = job.namespace
    tz = f" ({schedule.time_zone})" if schedule.time_zone else ""
    print(f"created schedule {ns}/{name}: \"{schedule.cron}\"{tz}, each run a {backend.KIND} {name}-MINUTES of "
          f"{job.nodes} pod(s)" + (f", warm-started from {schedule.warm_start_from}" if schedule.warm_start_from else "")
          + (f", queued in LocalQueue {job.queue}" if job.queue else ""))
    print(f"  launch schedule trigger {name} -n {ns}   |   launch schedule list -n {ns}")
    return 0


def run_verb(verb: str, argv: list[str], env: Mapping[str, str], now: float) -> int:
    from launcher.config import project_defaults
    from launcher.k8s import api as k8s
    from launcher.k8s import schedules

    args = build_verb_parser(verb).parse_args(argv)
    defaults = project_defaults(env)
    ns = namespace(args, defaults)
    api = k8s.connect(context=context(args, defaults))
    if verb == "list":
        rows = schedules.list_schedules(api, ns)
        if args.output in ("json", "yaml"):
            print_doc(rows, args.output)
            return 0
        import datetime

        from launcher.status.format import render, schedule_rows

        header, table = schedule_rows(rows, datetime.datetime.now(datetime.timezone.utc), wide=args.output == "wide")
        print(render(header, table, f"No schedules in namespace {ns}."))
        return 0
    name = args.schedule
    if verb == "delete":
        from launcher.schedule.render import stored_configmap_name

        schedules.delete_schedule(api, ns, name, stored=stored_configmap_name(name))
        print(f"deleted schedule {ns}/{name} (runs already started keep running; `launch list -n {ns}`)")
        return 0
    from launcher.schedule.render import cronjob_to_job

    cronjob = schedules.get_cronjob(api, ns, name)
    active = schedules.active_runs(api, ns, name)
    if active:
        # A Job created here bypasses the CronJob controller, so Forbid is honoured here (and by the submitter).
        print(f"launch: skipped: run {active[0]} of schedule {name} is still active (concurrencyPolicy Forbid)",
              file=sys.stderr)
        return 1
    run = contract.scheduled_run_name(name, now)
    try:
        schedules.create_run(api, ns, cronjob_to_job(cronjob, name=run))
    except ClusterError as e:
        if e.status == 409:
            raise SpecError(f"run {run} exists already (one run per minute); try again in a minute") from e
        raise
    print(f"triggered run {ns}/{run}: its Job submits the training job {run} (of the schedule's backend)")
    print(f"  launch status {run} -n {ns}   |   launch schedule list -n {ns}")
    return 0


def main(argv: list[str], env: Mapping[str, str]) -> int:
    """`launch schedule ...`; raises KubetrainError for bad input (launch's main prints it)."""
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0 if argv else int(contract.ExitCode.USAGE)
    if argv[0] in VERBS:
        return run_verb(argv[0], argv[1:], env, time.time())
    return create(argv, env)
