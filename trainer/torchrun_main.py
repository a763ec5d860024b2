"""The process `python -m trainer.torchrun_main`: torchrun, with its outcome written to the control dir.

torchrun reports a failed worker by raising ChildFailedError out of its own
main, which prints a page per failure. The supervisor needs the facts (which
rank, exit code or signal) to map them onto the exit-code contract, so this
wrapper catches the error and records a TorchrunResult (trainer/control_folder.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from trainer import contract
from trainer.control_folder import RankFailure, TorchrunResult


class _Refused(Exception):
    """torchrun's argument parser rejected what the supervisor passed."""


def _write_result(result: TorchrunResult) -> None:
    result.write(os.environ[contract.ENV_CONTROL_DIR])


def _torch_version() -> str:
    """The installed torch's version, read without importing it (the import may be what failed)."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "not installed"


def parse_torchrun_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """torchrun's namespace for `argv` ([torchrun flags..., -m MODULE, SCRIPT, script args...]).

    argparse looks for its options, abbreviations included, among all the arguments: a script's
    `--node 3` stopped the run as an ambiguous --node-rank. So only the part up to `-m MODULE`
    reaches torchrun's parser, and the rest becomes its training_script_args untouched.
    """
    end = argv.index("-m") + 2 if "-m" in argv else len(argv)
    args = parser.parse_args(argv[:end])
    args.training_script_args = [*args.training_script_args, *argv[end:]]
    return args


def main(argv: list[str]) -> int:
    # A torch that lacks torchrun's API or rejects our arguments cannot start on any retry: the
    # supervisor exits permanent (2) for these, not infra (201), which restarted such a job forever.
    try:
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import get_args_parser, run
    except Exception as e:  # ImportError, or torch itself failing to import
        _write_result(TorchrunResult(incompatible_torch=f"torch {_torch_version()}: {type(e).__name__}: {e}"))
        return int(contract.ExitCode.USAGE)
    parser = get_args_parser()

    def refuse(message: str) -> None:
        raise _Refused(message)

    parser.error = refuse  # argparse would print usage and exit 2, leaving the supervisor no reason
    try:
        args = parse_torchrun_args(parser, argv)
    except _Refused as e:
        _write_result(TorchrunResult(usage_error=f"{e} (torch {_torch_version()})"))
        return int(contract.ExitCode.USAGE)

    # torchrun logs every failure at ERROR with its own summary; the supervisor prints ours.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.elastic.agent.server.api").setLevel(logging.ERROR)
    result, code = TorchrunResult(), 0
    try:
        run(args)
    except ChildFailedError as e:
        result = TorchrunResult(failures=tuple(
            RankFailure(rank=global_rank, exitcode=f.exitcode, time=f.timestamp,
                        signal=f.signal_name() if f.exitcode < 0 else None)
            for global_rank, f in sorted(e.failures.items())))
        code = 1
    except Exception as e:  # rendezvous and agent failures: infrastructure
        result, code = TorchrunResult(agent_error=f"{type(e).__name__}: {e}"), int(contract.ExitCode.INFRA)
    _write_result(result)
    return code


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Tearing down torch's interpreter state takes ~0.4 s here, all of it after
    # the outcome is known and inside a preempted pod's grace period.
    os._exit(code)
