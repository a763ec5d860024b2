"""The supervisor: torchrun under a process that owns signals, deadlines and exit codes.

    python -m trainer run  ──▶  python -m trainer.torchrun_main  ──▶  python -m trainer.worker train.py
    (loop.py: PID 1)           (torchrun, own session)           (one per rank)

The kubelet signals only PID 1. On SIGTERM (or a cloud notice) the supervisor
writes a stop file that every local rank checks at its step boundary; the
ranks agree on the stop step in one collective, commit a checkpoint and exit.
The supervisor holds the grace deadline: at `grace - SUPERVISOR_GRACE_RESERVE`
it SIGTERMs torchrun, whose own shutdown timeout is derived from the same
reserve, and SIGKILLs what is left before the kubelet would. Then it maps
what happened onto the exit codes of `trainer.contract`.

It leaves no rank behind: torch starts each worker in a session of its own, so
killing torchrun's process group misses them, and a SIGKILLed torchrun left
both ranks training and committing into the run folder. The supervisor is a
child subreaper (PR_SET_CHILD_SUBREAPER): a killed torchrun's ranks become its
children, and on every exit path it SIGKILLs every descendant and reaps them. While
the ranks run it also reaps every orphan re-parented to it, as PID 1 must
(trainer/processes.py).

    loop        the Supervisor: starts torchrun, watches it, holds the grace deadline
    classify    what happened -> one exit code of the contract (pure)
    watchdog    which ranks made no progress for --hang-timeout (pure)
    torchrun_command  torchrun's command line and the workers' environment (pure)
    preemption  polling a cloud's preemption notice (AWS spot, GCP)

The worker (trainer/worker.py) and torchrun's wrapper (trainer/torchrun_main.py) stay
top-level modules, as does trainer/control_folder.py (the control folder's records, which
`launch chaos` reads too), as does trainer/processes.py (the /proc helpers the checkpoint
prefetch uses too): `python -m trainer.worker` and `python -m trainer.torchrun_main` are
the command lines that process tables show, and that tests, bench and `launch chaos`
recognise ranks by.
"""

from __future__ import annotations

from trainer.settings import RunConfig
from trainer.supervisor.classify import Outcome, classify
from trainer.supervisor.loop import Supervisor
from trainer.supervisor.torchrun_command import torchrun_args, torchrun_shutdown_timeout, worker_env
from trainer.supervisor.watchdog import stalled_ranks

__all__ = ["Outcome", "RunConfig", "Supervisor", "classify", "stalled_ranks", "torchrun_args",
           "torchrun_shutdown_timeout", "worker_env"]
