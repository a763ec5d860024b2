"""`python -m trainer run [flags] train.py [script args]`.

Every flag has a KUBETRAIN_* environment variable (named in trainer.contract),
which is how the launcher configures a pod; a flag wins over its variable.
Bad input is one line on stderr and exit 2, before anything starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Callable, Mapping, NoReturn

from trainer import contract
from trainer.contract import ExitCode
from trainer.errors import KubetrainError, UsageError, one_line

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `python -m trainer {self.prog.split()[-1]} --help`)")


# (flag, env var, type, default, help) — one table, so a flag and its variable cannot drift.
_FLAGS: list[tuple[str, str, Callable, object, str]] = [
    ("--nproc-per-node", contract.ENV_NPROC_PER_NODE, int, None,
     "worker processes on this node (default: PET_NPROC_PER_NODE from the operator, else 1)"),
    ("--checkpoint", contract.ENV_CHECKPOINT_URI, str, contract.DEFAULT_CHECKPOINT_DIR,
     "checkpoint root: a folder or any fsspec URI (file://, s3://, gs://, memory://)"),
    ("--run-id", contract.ENV_RUN_ID, str, None,
     "folder under the checkpoint root; reruns with the same id resume (default: the script's name)"),
    ("--checkpoint-every-steps", contract.ENV_CHECKPOINT_EVERY_STEPS, int, contract.DEFAULT_CHECKPOINT_EVERY_STEPS,
     "save every N steps (0: never on a step count)"),
    ("--checkpoint-every-seconds", contract.ENV_CHECKPOINT_EVERY_SECONDS, float, 0.0,
     "also save when this many seconds passed since the last save (0: off)"),
    ("--keep", contract.ENV_CHECKPOINT_KEEP, int, contract.DEFAULT_CHECKPOINT_KEEP,
     "committed checkpoints to keep"),
    ("--storage-timeout", contract.ENV_STORAGE_TIMEOUT, float, contract.DEFAULT_STORAGE_TIMEOUT,
     "how long restore keeps reading a checkpoint that storage errors keep it from reading (it is not known to be "
     f"bad, so no fallback to an older step) before exiting {int(ExitCode.INFRA)} with `latest` untouched"),
    ("--max-restarts", contract.ENV_MAX_RESTARTS, int, None,
     "restarts in a row without a newly committed step (preemptions do not count) before the run stops for good "
     f"with exit {int(ExitCode.CRASH_LOOP)}; each start is recorded in <checkpoint>/<run-id>/"
     f"{contract.ATTEMPTS_DIR}/ (default: no limit; `launch` sets it from its own --max-restarts)"),
    ("--grace-seconds", contract.ENV_GRACE_SECONDS, float, contract.DEFAULT_GRACE_SECONDS,
     "from SIGTERM to the kubelet's SIGKILL; the launcher sets the pod's terminationGracePeriodSeconds from it"),
    ("--hang-timeout", contract.ENV_HANG_TIMEOUT, float, contract.DEFAULT_HANG_TIMEOUT,
     f"kill the workers and exit {int(ExitCode.HANG)} after this many seconds without step progress (0: off)"),
    ("--preemption-url", contract.ENV_PREEMPTION_URL, str, None,
     "poll this AWS spot instance-action or GCP preempted metadata URL for a preemption notice"),
    ("--preemption-poll-seconds", contract.ENV_PREEMPTION_POLL_SECONDS, float,
     contract.DEFAULT_PREEMPTION_POLL_SECONDS, "how often to poll --preemption-url"),
    ("--code", contract.ENV_CODE_URI, str, None,
     "a tar.gz code bundle (path or URI) to unpack and run SCRIPT from; `launch` sets this"),
    ("--code-sha256", contract.ENV_CODE_SHA256, str, None, "refuse a --code bundle with another sha256"),
    ("--workdir", contract.ENV_WORKDIR, str, None, "where to unpack --code (default: a new temp dir)"),
    ("--warm-start-from", contract.ENV_WARM_START_FROM, str, None,
     "when this run has no checkpoint yet, load the model weights of another run's newest committed step: a run "
     f"folder URI, or '{contract.WARM_START_LATEST}' for the previous run of this run's schedule under --checkpoint"),
]

EPILOG = f"""exit codes: 0 finished; 1 the script raised (not retried); 2 bad flags;
{int(ExitCode.PREEMPTED)} preempted, checkpoint committed; 128+N killed by signal N (137: SIGKILL/OOM);
{int(ExitCode.HANG)} hang detected by the watchdog; {int(ExitCode.INFRA)} rendezvous, transport or storage failure;
{int(ExitCode.CRASH_LOOP)} crash loop: --max-restarts spent without a new checkpoint (not retried).
Codes >= 128 are retried by the Kubeflow training operator's restartPolicy ExitCode."""


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m trainer", description="kubetrain's in-container runtime.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    run = sub.add_parser("run", help="run a training script under torchrun with preemption-safe checkpoints",
                         description="Run SCRIPT on N local ranks under torchrun; checkpoint, survive preemption, "
                                     "and exit with a code the operator understands.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, env_name, conv, default, text in _FLAGS:
        raw = env.get(env_name)
        if raw not in (None, ""):
            try:
                default = conv(raw)
            except ValueError:
                raise UsageError(f"{env_name}={raw!r} is not a valid {conv.__name__}; fix or unset it")
        run.add_argument(flag, type=conv, default=default, help=f"{text} [env {env_name}]")
    run.add_argument("--warm-start-optimizer", action="store_true",
                     default=env.get(contract.ENV_WARM_START_OPTIMIZER) == "1",
                     help=f"with --warm-start-from, restore the optimizer too (default: a fresh one) "
                          f"[env {contract.ENV_WARM_START_OPTIMIZER}=1]")
    run.add_argument("script", help="the training script (a .py file)")
    run.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    return parser


def parse_run_config(argv: list[str], env: Mapping[str, str]):
    """Flags and env → a validated RunConfig; UsageError names the bad value."""
    from trainer.supervisor import RunConfig

    args = build_parser(env).parse_args(argv)
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    for name in ("checkpoint_every_steps", "keep"):
        if getattr(args, name) < (1 if name == "keep" else 0):
            raise UsageError(f"--{name.replace('_', '-')} must be >= {1 if name == 'keep' else 0}, "
                             f"got {getattr(args, name)}")
    if args.max_restarts is not None and args.max_restarts < 0:
        raise UsageError(f"--max-restarts must be >= 0, got {args.max_restarts}")
    if not args.storage_timeout > 0:
        raise UsageError(f"--storage-timeout must be > 0 seconds, got {args.storage_timeout}")
    for name in ("checkpoint_every_seconds", "hang_timeout"):
        if not getattr(args, name) >= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not args.grace_seconds >= contract.SUPERVISOR_GRACE_RESERVE + 1:
        raise UsageError(f"--grace-seconds must be >= {contract.SUPERVISOR_GRACE_RESERVE + 1:.0f}, "
                         f"got {args.grace_seconds}")
    if not args.preemption_poll_seconds > 0:
        raise UsageError(f"--preemption-poll-seconds must be > 0, got {args.preemption_poll_seconds}")
    run_id = args.run_id or os.path.splitext(os.path.basename(args.script))[0]
    if not _RUN_ID_RE.match(run_id):
        raise UsageError(f"--run-id {run_id!r} must be letters, digits, '.', '_' or '-' (at most 128)")
    if args.warm_start_from == contract.WARM_START_LATEST and contract.parse_scheduled_run_name(run_id) is None:
        raise UsageError(f"--warm-start-from {contract.WARM_START_LATEST} needs the run id of a scheduled run, "
                         f"SCHEDULE-MINUTES (e.g. nightly-29403360), got {run_id!r}; pass a run folder URI instead")
    uri = args.checkpoint
    from trainer.storage import open_storage

    storage = open_storage(uri)  # raises UsageError for an unknown scheme, a missing bucket, ...
    if storage.is_local:
        uri = storage.uri  # absolute, before any chdir below: the workers may run elsewhere
    if args.preemption_url:
        from trainer.preemption import notice_format

        try:
            notice_format(args.preemption_url)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.code:
        if os.path.isabs(args.script) or ".." in args.script.split("/"):
            raise UsageError(f"script {args.script!r} must be a relative path inside the --code bundle")
        from trainer.codebundle import unpack

        workdir = unpack(args.code, args.code_sha256, args.workdir)
        os.chdir(workdir)  # the script runs from its own tree, as it did on the user's machine
    if not os.path.isfile(args.script):
        raise UsageError(f"script {args.script!r} does not exist or is not a file")
    return RunConfig(script=args.script, script_args=tuple(args.script_args), nproc_per_node=args.nproc_per_node,
                     checkpoint_uri=uri, run_id=run_id, every_steps=args.checkpoint_every_steps,
                     every_seconds=args.checkpoint_every_seconds, keep=args.keep,
                     storage_timeout=args.storage_timeout, grace_seconds=args.grace_seconds,
                     hang_timeout=args.hang_timeout, preemption_url=args.preemption_url,
                     preemption_poll_seconds=args.preemption_poll_seconds,
                     warm_start_from=args.warm_start_from or None, warm_start_optimizer=args.warm_start_optimizer,
                     max_restarts=args.max_restarts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="[kubetrain] %(message)s")
    logging.getLogger("kubetrain").setLevel(logging.INFO)  # ours at INFO; botocore & co. only when they warn
    try:
        if argv and argv[0] in ("-h", "--help"):
            build_parser(os.environ).print_help()
            return 0
        cfg = parse_run_config(argv, os.environ)
        from trainer.supervisor import Supervisor

        return Supervisor(cfg).run()
    except KubetrainError as e:
        print(f"python -m trainer: error: {one_line(str(e))}", file=sys.stderr)
        return int(ExitCode.USAGE)
