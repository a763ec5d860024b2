"""`launch chaos`: inject preemptions and node loss, and show that training survives them.

    launch chaos train.py --local --nproc 2 --faults 5 [--seed S] [-- script args]
    launch chaos JOB --kill-pod random|master|worker-N|node-N [--every 120s] [--count N]
    launch chaos JOB --evict-with-grace 30 | --drain-node | --kueue-preempt

--local runs the script without and with faults and checks the invariants
(kubetrain_chaos/). Against a cluster it acts on one running job's own pods and
nodes only (a PyTorchJob: master-0, worker-N; a TrainJob: node-N), and reports
how the job reacted (restarts, the step each restart resumed from) from the
controller's status and the runtime's logs.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import sys
from typing import Mapping

from launcher.commandline import Parser, add_target_flags, context, namespace, split_script_args
from launcher.errors import SpecError
from trainer import contract

EPILOG = """exit codes: 0 every invariant held (--local) or every fault was done and the job recovered;
1 an invariant failed or the job did not recover; 2 bad input."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="launch chaos", description=__doc__.split("\n\n")[0] + " Script arguments go after `--`.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="--local: the training script; else: the name of a running job")
    g = p.add_argument_group("local: the script, without and with faults, compared")
    g.add_argument("--local", action="store_true", help="run the script here under `python -m trainer run`")
    g.add_argument("--nproc", type=int, default=2, help="ranks (default 2)")
    g.add_argument("--faults", type=int, default=5, help="faults to inject (default 5)")
    g.add_argument("--seed", type=int, default=None, help="fault steps and kinds (default: random, printed)")
    g.add_argument("--kinds", default=None, help="comma-separated subset of: " + ", ".join(contract.CHAOS_KINDS)
                   + " (default: all of them); or also: " + ", ".join(contract.CHAOS_EXTRA_KINDS))
    g.add_argument("--checkpoint-every-steps", type=int, default=20, help="both runs' cadence (default 20)")
    g.add_argument("--grace-seconds", type=float, default=30.0, help="SIGTERM to SIGKILL (default 30)")
    g.add_argument("--tolerance", type=float, default=None, help="for scripts that are not deterministic: compare "
                   "floating-point state within this rtol/atol, not bit for bit")
    g.add_argument("--workdir", default=None, help="checkpoints and logs (default: a new temp folder)")
    g.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole check (default 3600)")
    g.add_argument("--repeat", type=int, default=1, help="run the same fault plan N times (same seed) and report "
                   "any disagreement between the verdicts (default 1)")
    g.add_argument("--thorough", action="store_true", help="a pre-merge check: every kind, every commit phase, "
                   "resumes at every residue mod 2..8 and at an epoch's first and last step; prints its time estimate")
    g.add_argument("--epoch-steps", type=int, default=None, help="steps per epoch of the script: faults then also "
                   "resume at an epoch's first and last step")
    g.add_argument("--no-in-place", action="store_true", help="a killed rank or DataLoader worker always ends "
                   "its attempt and the run restarts as a replaced pod would (default: the runtime recovers it in "
                   "place, --in-place-restarts, where the next fault's plan allows)")
    g.add_argument("-o", "--output", choices=("text", "json"), default="text")
    g = p.add_argument_group("cluster: faults to one running PyTorchJob or TrainJob")
    what = g.add_mutually_exclusive_group()
    what.add_argument("--kill-pod", default=None, metavar="random|master|worker-N|node-N",
                      help="delete a pod at once (grace 0), as a node loss would; master is the rank-0 pod, "
                           "worker-N a PyTorchJob's, node-N a TrainJob's")
    what.add_argument("--evict-with-grace", type=float, default=None, metavar="S",
                      help="evict a random pod (Eviction API, PDB honoured) with S seconds of grace: a spot reclaim")
    what.add_argument("--drain-node", action="store_true",
                      help="cordon the node of a random pod of the job and evict the job's pods on it")
    what.add_argument("--kueue-preempt", action="store_true",
                      help="a job behind Kueue: submit a short-lived higher-priority Workload that takes its GPUs, "
                           "remove it once Kueue evicted the job, and report re-admission and the resume step")
    g.add_argument("--every", default="120s", help="time between faults: 90s, 2m (default 120s)")
    g.add_argument("--count", type=int, default=1, help="faults to inject (default 1)")
    g.add_argument("--wait", default="10m", help="how long to wait for the job to recover after the last fault")
    add_target_flags(g)
    return p


def parse_duration(text: str, flag: str) -> float:
    """'90', '90s', '2m', '1h' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise SpecError(f"{flag} {text!r} is not a duration like 90s, 2m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def main(argv: list[str], env: Mapping[str, str]) -> int:
    flags, script_args = split_script_args(argv)
    args = build_parser().parse_args(flags)
    if args.local:
        return _local(args, script_args)
    if script_args:
        raise SpecError("arguments after `--` are for a script; against a cluster, name a running job")
    return _cluster(args, env)


def _local(args: argparse.Namespace, script_args: list[str]) -> int:
    if args.kill_pod or args.evict_with_grace is not None or args.drain_node or args.kueue_preempt:
        raise SpecError("--kill-pod/--evict-with-grace/--drain-node/--kueue-preempt act on a cluster job; "
                        "drop them or drop --local")
    from kubetrain_chaos import driver as chaos, plan as chaos_plan, report as chaos_report

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else contract.CHAOS_KINDS
    try:
        plan = chaos_plan.ChaosPlan(script=args.target, script_args=tuple(script_args), nproc=args.nproc,
                               faults=args.faults, seed=seed, kinds=kinds, every_steps=args.checkpoint_every_steps,
                               grace_seconds=args.grace_seconds, tolerance=args.tolerance, workdir=args.workdir,
                               timeout=args.timeout, thorough=args.thorough, epoch_steps=args.epoch_steps,
                               in_place=not args.no_in_place)
        echo = (lambda line: print(line, file=sys.stderr, flush=True)) if args.output == "json" else \
            (lambda line: print(line, flush=True))
        # SIGTERM (a CI job cancelled) unwinds like Ctrl-C, so no training process outlives us.
        signal.signal(signal.SIGTERM, _interrupt)
        reports = chaos.run_repeated(plan, args.repeat, echo=echo)
    except chaos_plan.UsageError as e:
        raise SpecError(str(e)) from e
    from launcher.status import ledger as restart_ledger

    text, code = chaos_report.render(reports, args.output, restart_ledger.lines)  # the launcher renders the ledger
    print(text)
    return code


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cluster(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if not (args.kill_pod or args.evict_with_grace is not None or args.drain_node or args.kueue_preempt):
        raise SpecError("say what to do: --kill-pod random|master|worker-N|node-N, --evict-with-grace S, --drain-node "
                        "or --kueue-preempt (or --local to check a script here)")
    if args.kill_pod and not re.fullmatch(r"random|master|(worker|node)-\d+", args.kill_pod):
        raise SpecError(f"--kill-pod {args.kill_pod!r}: use random, master, worker-N (PyTorchJob) or node-N (TrainJob)")
    if args.evict_with_grace is not None and args.evict_with_grace < 0:
        raise SpecError("--evict-with-grace must be >= 0 seconds")
    if args.count < 1:
        raise SpecError(f"--count must be >= 1, got {args.count}")
    every = parse_duration(args.every, "--every")
    wait = parse_duration(args.wait, "--wait")
    from launcher.chaos.cluster import ChaosAction, run_cluster_chaos
    from launcher.config import project_defaults
    from launcher.k8s.api import connect

    defaults = project_defaults(env)
    if args.kueue_preempt:
        from launcher.chaos.kueue_preempt import run_kueue_preempt

        return run_kueue_preempt(connect(context=context(args, defaults)), namespace(args, defaults), args.target, wait)
    action = ChaosAction(kill_pod=args.kill_pod, evict_grace=args.evict_with_grace, drain_node=args.drain_node,
                         every_s=every, count=args.count, wait_s=wait)
    api = connect(context=context(args, defaults))
    return run_cluster_chaos(api, namespace(args, defaults), args.target, action, seed=args.seed)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:], os.environ))
