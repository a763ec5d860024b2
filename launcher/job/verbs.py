"""`launch status | logs | cancel | list`: the verbs on jobs already on the cluster."""

from __future__ import annotations

import argparse
from typing import Mapping

from launcher.commandline import Parser, add_target_flags, context, namespace

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
        from launcher.k8s.status import read_status
        from launcher.status.report import print_status

        print_status(read_status(api, ns, args.job), output=args.output, all_pods=args.pods)
        if args.timeline:
            from launcher.status.timeline_out import show

            return show(jobs.get_job(api, ns, args.job), args.timeline)
        return 0
    if verb == "logs":
        from launcher.k8s.logs import stream_logs

        return stream_logs(api, ns, args.job, follow=args.follow)
    if verb == "cancel":
        jobs.cancel(api, ns, args.job)
        print(f"cancelled {ns}/{args.job}")
        return 0
    from launcher.status.report import print_list

    from launcher.k8s.kueue import admissions

    found = jobs.list_all_jobs(api, ns)
    print_list(jobs.job_rows(found, admissions(api, ns, found)), ns,
               kind=" or ".join(f"{b.KIND}s" for b in backends.BACKENDS.values()), output=args.output)
    return 0
