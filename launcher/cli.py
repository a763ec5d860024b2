"""`launch`: submit a training script as a PyTorchJob or TrainJob (--backend), or run it here with --local.

    launch train.py --gpus 8                       # 1 node x 8 GPUs
    launch train.py --gpus 16 --gpus-per-node 8    # 2 nodes x 8
    launch train.py --local --nproc 2              # this machine, no cluster
    launch train.py --gpus 8 --dry-run -o yaml     # every object it would create
    launch status JOB | logs JOB [-f] | cancel JOB | list
    launch schedule train.py --cron "0 3 * * *" --gpus 8   # a CronJob that submits it (see --help)
    launch chaos train.py --local --faults 5        # prove it resumes exactly; or chaos JOB --kill-pod ...

Arguments for the script go after `--`. Bad input is one line on stderr and
exit 2, before anything is created.

Dispatch only: each command is a module with `main(argv, env) -> int` that raises
KubetrainError for bad input, imported only when used so `launch --help` stays light.
"""

from __future__ import annotations

import importlib
import os
import sys

from launcher.errors import KubetrainError, SpecError, one_line
from trainer import contract

#: The first word -> the module that runs it (anything else is a script: launcher.job.command).
COMMANDS = {"schedule": "launcher.schedule.command", "chaos": "launcher.chaos.command"}
#: The verbs on jobs already on the cluster (launcher.job.verbs).
JOB_VERBS = ("status", "logs", "cancel", "list")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            from launcher.job.command import build_parser

            build_parser().print_help()
            return 0 if argv else int(contract.ExitCode.USAGE)
        if argv[0] in JOB_VERBS:
            from launcher.job import verbs

            return verbs.main(argv[0], argv[1:], os.environ)
        if argv[0] in COMMANDS:
            return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:], os.environ)
        from launcher.job import command

        return command.main(argv, os.environ)
    except KubetrainError as e:
        print(f"launch: error: {one_line(str(e))}", file=sys.stderr)
        return int(contract.ExitCode.USAGE) if isinstance(e, SpecError) else 1
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:  # argparse's -h/--help (anywhere in the flags) printed the help: main returns, never exits
        return e.code if isinstance(e.code, int) else (0 if e.code is None else int(contract.ExitCode.USAGE))


if __name__ == "__main__":
    sys.exit(main())
