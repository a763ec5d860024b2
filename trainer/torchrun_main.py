"""The process `python -m trainer.torchrun_main`: torchrun, with its outcome written to the control dir.

torchrun reports a failed worker by raising ChildFailedError out of its own
main, which prints a page per failure. The supervisor needs the facts (which
rank, exit code or signal) to map them onto the exit-code contract, so this
wrapper catches the error and records a TorchrunResult (trainer/control_folder.py).

`python -m trainer.torchrun_main --standby` is the same process started ahead as a spare for an
in-place restart: torch imported, waiting for its arguments (standby(), trainer/supervisor/spare.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

from trainer import contract
from trainer.control_folder import RankFailure, SpareReady, TorchrunResult


#: The one argument that starts this process as a spare (standby()), not torchrun.
STANDBY = "--standby"


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


def _close_a_failed_group_within(timeout_s: int) -> None:
    """torchrun (torch 2.15) ends the ranks left after one failed with PContext.close()'s default wait,
    30 s, not --shutdown-timeout (SubprocessContext._poll, MultiprocessContext._poll). Our ranks take its
    SIGTERM as a stop request, which a group with a dead peer cannot agree on, so they were SIGKILLed only
    30 s later: measured here, a crashed rank's peer held each restart 30.3 s. With this, the default is
    `timeout_s` (--shutdown-timeout: 1 to 5 s, torchrun_command.torchrun_shutdown_timeout)."""
    from torch.distributed.elastic.multiprocessing.api import PContext

    close = PContext.close
    if getattr(close, "_kubetrain", False):
        return

    def close_within(self, death_sig=None, timeout: int = timeout_s) -> None:
        close(self, death_sig, timeout)

    close_within._kubetrain = True  # type: ignore[attr-defined]
    PContext.close = close_within  # type: ignore[method-assign]


def _run_warm(args: argparse.Namespace) -> None:
    """torchrun's run(args), with the ranks forked from the forkserver standby() preloaded
    (trainer/warm_rank.py) instead of started as `python -u -m trainer.worker`."""
    import uuid

    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args

    from trainer import warm_rank

    if args.standalone:  # as run() does for --standalone
        args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    if args.master_port is None:
        args.master_port = 29500
    config, _, _ = config_from_args(args)
    config.start_method = "forkserver"
    elastic_launch(config=config, entrypoint=warm_rank.rank)(list(args.training_script_args), dict(os.environ))


def standby() -> int:
    """A spare for the supervisor's next in-place restart (trainer/supervisor/spare.py): import torch,
    start a forkserver that imports it too, then wait for one line on stdin, the JSON list of
    arguments main() takes, and run it with warm ranks. End of input: not needed after all."""
    import multiprocessing
    import time
    from multiprocessing import forkserver

    started = time.monotonic()
    import torch.distributed.run  # noqa: F401  what makes this process warm

    multiprocessing.set_forkserver_preload(["trainer.warm_preload"])
    # The forkserver forks only once it has imported what it preloads: one fork of nothing says so.
    nothing = multiprocessing.get_context("forkserver").Process(target=os.getpid)
    nothing.start()
    nothing.join()
    control = os.environ.get(contract.ENV_CONTROL_DIR)
    if control:
        SpareReady(os.getpid(), time.monotonic() - started).write(control)
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    try:
        return main(json.loads(line), warm=True)
    finally:
        # Both would end once this process has, but not before the supervisor counts them as left
        # behind; _stop is what multiprocessing's own tests use (closes the pipe, reaps the process).
        from multiprocessing import resource_tracker

        for helper in (forkserver._forkserver, resource_tracker._resource_tracker):
            with contextlib.suppress(Exception):
                helper._stop()


def main(argv: list[str], warm: bool = False) -> int:
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
    _close_a_failed_group_within(args.shutdown_timeout)
    result, code = TorchrunResult(), 0
    try:
        _run_warm(args) if warm else run(args)
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
    code = standby() if sys.argv[1:] == [STANDBY] else main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Tearing down torch's interpreter state takes ~0.4 s here, all of it after
    # the outcome is known and inside a preempted pod's grace period.
    os._exit(code)
