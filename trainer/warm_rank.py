"""A rank started warm: forked from a process that has torch imported, instead of a new Python.

An in-place restart's ranks (trainer/supervisor/spare.py) come from a forkserver that imported
torch (trainer/warm_preload.py) while the previous attempt was still training: the restart skips the
ranks' interpreter start and torch import, which is most of what it costs (BENCHMARKS.md, "From a
warm spare"). torchrun starts them with a function entrypoint (`rank`), as its own --run-path does;
what the rank then runs is trainer/worker.py's main, the same as a rank started cold. This module
stays light: torchrun's agent imports it to name `rank`.
"""

from __future__ import annotations

import os

from trainer import worker


def rank(argv: list[str], agent_env: dict[str, str]) -> None:
    """One rank: `python -m trainer.worker ARGV`, in this forked process.

    `agent_env`: torchrun's environment when it started the ranks. A forked rank has the
    forkserver's, plus what torchrun set for the rank (RANK, MASTER_ADDR, ...): what the agent
    had beyond that is added, so the rank sees what a cold one would. A non-zero code leaves as
    SystemExit (the process's exit code, as torchrun reads it); zero returns, for torchrun's queue.
    """
    for key, value in agent_env.items():
        os.environ.setdefault(key, value)
    code = worker.main(argv)
    # As worker.exit_now: the script's atexit handlers, then no interpreter finalization (the
    # forked process ends in os._exit once torchrun has read the return value).
    worker.run_exit_handlers()
    if code:
        raise SystemExit(code)
