"""`launch status | logs | cancel | list`: the verbs on jobs already on the cluster."""

from __future__ import annotations

import argparse
import datetime
import time
from typing import TYPE_CHECKING, Any, Mapping

from launcher.commandline import Parser, add_target_flags, context, namespace

if TYPE_CHECKING:
    from launcher.status.model import JobStatus

VERBS = ("status", "logs", "cancel", "list")


def build_parser(verb: str) -> argparse.ArgumentParser:
    p = Parser(prog=f"launch {verb}")
    if verb != "list":
        p.add_argument("job", help="the job name `launch` printed")
    if verb == "logs":
        p.add_argument("-f", "--follow", action="store_true", help="keep streaming; wait for pending pods")
    if verb in ("status", "list"):
        p.add_argument("-o", "--output", choices=("text", "json", "yaml", "wide"), default="text",
                       help="text (default), json, yaml, or wide" + (" (every pod)" if verb == "status" else ""))
    if verb == "status":
        p.add_argument("--pods", action="store_true", help="list every pod, not only those that are not healthy")
        p.add_argument("--timeline", nargs="?", const="-", metavar="FILE.svg",
                       help="draw the restart ledger: after the status, or into FILE.svg")
    add_target_flags(p)
    return p


def main(verb: str, argv: list[str], env: Mapping[str, str]) -> int:
    """`launch VERB ...`; raises KubetrainError for bad input (launch's main prints it)."""
    from launcher import backends
    from launcher.config import project_defaults
    from launcher.k8s import api as k8s
    from launcher.k8s import jobs

    args = build_parser(verb).parse_args(argv)
    defaults = project_defaults(env)
    ns = namespace(args, defaults)
    api = k8s.connect(context=context(args, defaults))
    if verb == "status":
        from launcher.status.report import print_status

        print_status(status(api, ns, args.job), output=args.output, all_pods=args.pods)
        if args.timeline:
            from launcher.status.timeline_out import show

            return show(jobs.get_job(api, ns, args.job), args.timeline)
        return 0
    if verb == "logs":
        from launcher.k8s.logs import stream_logs

        return stream_logs(api, ns, args.job, follow=args.follow, kueue_waiting=kueue_waiting)
    if verb == "cancel":
        from launcher.job.render import code_configmap_name

        jobs.cancel(api, ns, args.job, configmaps=(code_configmap_name(args.job),))
        print(f"cancelled {ns}/{args.job}")
        return 0
    from launcher.k8s.kueue import read_kueue_all
    from launcher.status.listing import job_records
    from launcher.status.report import print_list

    found = jobs.list_all_jobs(api, ns)
    print_list(job_records(found, read_kueue_all(api, ns, found)), ns,
               kind=" or ".join(f"{b.KIND}s" for b in backends.BACKENDS.values()), output=args.output)
    return 0


def status(api: Any, ns: str, name: str) -> JobStatus:
    """`launch status`: read the cluster and, beside it, the restart ledger; then build the JobStatus.

    Layers: launcher/k8s/status.py reads (raw), launcher/objectstore.py reads the ledger's objects,
    launcher/status/build.py makes the JobStatus (pure), launcher/status/report.py prints it.
    """
    from launcher import objectstore
    from launcher.k8s import status as k8s_status
    from launcher.k8s.jobs import get_job
    from launcher.status import build, ledger
    from launcher.status.model import Ledger

    job = get_job(api, ns, name)
    where = ledger.location(job)
    # Started first: the ledger read overlaps the cluster reads, and waits at most READ_TIMEOUT.
    reading = objectstore.BoundedRead(ledger.folder(where[0], where[1]), timeout=ledger.READ_TIMEOUT) if where else None
    reads = k8s_status.read(api, ns, job)
    objects, error = reading.result() if reading is not None else (None, None)
    summary, unread = ledger.summarize(where, objects, error, time.time())
    return build.build(reads, Ledger(summary, unread), datetime.datetime.now(datetime.timezone.utc))


def kueue_waiting(api: Any, ns: str, job: dict) -> str | None:
    """What a job behind Kueue waits for while it is not admitted (None: admitted, or not behind Kueue)."""
    from launcher.k8s.kueue import read_kueue
    from launcher.status import admission

    reads = read_kueue(api, ns, job)
    return admission.waiting_line(admission.of_reads(job, reads)) if reads is not None else None
