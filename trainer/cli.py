"""`python -m trainer run [flags] train.py [script args]`.

Every flag has a KUBETRAIN_* environment variable (named in trainer.contract),
which is how the launcher configures a pod; a flag wins over its variable. The
flags, variables, defaults, bounds and help all come from trainer/settings.py.
Bad input is one line on stderr and exit 2, before anything starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from typing import Mapping, NoReturn

from trainer import contract
from trainer.contract import ExitCode
from trainer.errors import KubetrainError, StorageError, UsageError, one_line
from trainer.settings import SETTINGS, RunConfig

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `python -m trainer {self.prog.split()[-1]} --help`)")


EPILOG = f"""exit codes: 0 finished; 1 the script raised (not retried); 2 bad flags, or another live run writes the run folder;
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
    for s in SETTINGS:
        default = None if s.field == "run_id" else s.default  # no --run-id: the script's name (below)
        raw = env.get(s.env)
        if s.type is bool:  # a switch
            run.add_argument(s.flag, dest=s.field, action="store_true", default=raw == "1",
                             help=f"{s.help} [env {s.env}=1]")
            continue
        if raw not in (None, ""):
            try:
                default = s.parse(raw)
            except ValueError:
                raise UsageError(f"{s.env}={raw!r} is not a valid {s.type.__name__}; fix or unset it")
        run.add_argument(s.flag, dest=s.field, metavar=s.flag[2:].upper().replace("-", "_"), type=s.type,
                         default=default, help=f"{s.help} [env {s.env}]")
    run.add_argument("script", help="the training script (a .py file)")
    run.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    return parser


def split_at_script(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`run`'s own arguments up to and including SCRIPT, and the script's arguments (None: not found).

    argparse looks for its options, abbreviations included, among all the arguments, the script's
    too: `train.py --check 3` stopped the run as an ambiguous --checkpoint. So the script's arguments
    never reach the parser: SCRIPT is the first argument that is neither a flag nor a flag's value.
    Where a flag before it is not one of ours (or `--`), everything goes to the parser, which says so.
    One `--` right after SCRIPT is a separator and is dropped (`train.py -- --steps 5`), as argparse's
    REMAINDER dropped it before; any later `--` reaches the script.
    """
    takes_value = {s.flag: s.type is not bool for s in SETTINGS} | {"--help": False, "-h": False}
    i = 1
    while argv[:1] == ["run"] and i < len(argv):
        arg = argv[i]
        if arg == "-" or not arg.startswith("-"):
            rest = argv[i + 1:]
            return argv[:i + 1], rest[1:] if rest[:1] == ["--"] else rest
        name, eq, _ = arg.partition("=")
        if name not in takes_value:  # an abbreviation, as argparse takes one: a unique prefix of a long flag
            flags = [f for f in takes_value if f.startswith(name)] if name.startswith("--") and name != "--" else []
            if len(flags) != 1:
                break
            name = flags[0]
        i += 2 if takes_value[name] and not eq else 1
    return argv, None


def parse_run_config(argv: list[str], env: Mapping[str, str]):
    """Flags and env → a validated RunConfig; UsageError names the bad value."""
    own, script_args = split_at_script(argv)
    args = build_parser(env).parse_args(own)
    if script_args is not None:
        args.script_args = script_args
    for s in SETTINGS:
        problem = s.problem(getattr(args, s.field))
        if problem:
            raise UsageError(problem)
    run_id = args.run_id or os.path.splitext(os.path.basename(args.script))[0]
    if not _RUN_ID_RE.match(run_id):
        raise UsageError(f"--run-id {run_id!r} must be letters, digits, '.', '_' or '-' (at most 128)")
    if args.warm_start_from == contract.WARM_START_LATEST and contract.parse_scheduled_run_name(run_id) is None:
        raise UsageError(f"--warm-start-from {contract.WARM_START_LATEST} needs the run id of a scheduled run, "
                         f"SCHEDULE-MINUTES (e.g. nightly-29403360), got {run_id!r}; pass a run folder URI instead")
    uri = args.checkpoint_uri
    from trainer.storage import open_storage

    storage = open_storage(uri)  # raises UsageError for an unknown scheme, a missing bucket, ...
    if storage.is_local:
        uri = storage.uri  # absolute, before any chdir below: the workers may run elsewhere
    if args.preemption_url:
        from trainer.supervisor.preemption import notice_format

        try:
            notice_format(args.preemption_url)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.code_uri:
        if os.path.isabs(args.script) or ".." in args.script.split("/"):
            raise UsageError(f"script {args.script!r} must be a relative path inside the --code bundle")
        from trainer.codebundle import unpack

        workdir = unpack(args.code_uri, args.code_sha256, args.workdir)
        os.chdir(workdir)  # the script runs from its own tree, as it did on the user's machine
    if not os.path.isfile(args.script):
        raise UsageError(f"script {args.script!r} does not exist or is not a file")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)}
    return RunConfig(**{**given, "script_args": tuple(args.script_args), "checkpoint_uri": uri, "run_id": run_id,
                        "warm_start_from": args.warm_start_from or None})


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
    except StorageError as e:  # before the run began (the code bundle): an outage, so retry later
        print(f"python -m trainer: error: {one_line(str(e))}", file=sys.stderr)
        return int(ExitCode.INFRA)
    except KubetrainError as e:
        print(f"python -m trainer: error: {one_line(str(e))}", file=sys.stderr)
        return int(ExitCode.USAGE)
