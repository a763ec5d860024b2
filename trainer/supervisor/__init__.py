"""The supervisor: torchrun under a process that owns signals, deadlines and exit codes.

    python -m trainer run  ──▶  python -m trainer.torchrun_main  ──▶  python -m trainer.worker train.py
    (loop.py: PID 1)           (torchrun, own session)                (one per rank)

    an in-place restart:   ──▶  trainer.torchrun_main --standby   ──▶  forkserver ──▶ warm_rank.rank
                               (the warm spare, started ahead)        (torch preloaded; one fork per rank)

Rules: on SIGTERM (or a cloud notice) it writes a StopRequest to the control folder and the ranks
agree on a stop step and commit; at `grace - SUPERVISOR_GRACE_RESERVE` it SIGTERMs torchrun (whose
shutdown timeout comes from the same reserve) and SIGKILLs what is left before the kubelet would;
it is a child subreaper, reaps every orphan while the ranks run, and on every exit path kills and
reaps every descendant; it exits with one code of `trainer.contract`.

    loop              the Supervisor: starts torchrun, watches it, holds the grace deadline
    classify          what happened -> one exit code of the contract (pure)
    watchdog          which ranks made no progress for --hang-timeout (pure)
    torchrun_command  torchrun's command line and the workers' environment (pure)
    preemption        polling a cloud's preemption notice (AWS spot, GCP)
    in_place          whether an attempt's end restarts the ranks in the same supervisor (pure)
    spare             the warm spare: the next in-place restart's torchrun, started ahead

The processes it starts (trainer/worker.py, trainer/torchrun_main.py) are top-level modules: their
`python -m` names are what process tables show and what tests, the bench and `launch chaos` match.
Warm ranks show the forkserver's command line instead: they are found by their control folder.
Why a supervisor at all, and why a subreaper: docs/architecture.md, "Decisions".
"""

from __future__ import annotations

from trainer.settings import RunConfig
from trainer.supervisor.classify import Outcome, classify
from trainer.supervisor.loop import Supervisor
from trainer.supervisor.torchrun_command import torchrun_args, torchrun_shutdown_timeout, worker_env
from trainer.supervisor.watchdog import stalled_ranks

__all__ = ["Outcome", "RunConfig", "Supervisor", "classify", "stalled_ranks", "torchrun_args",
           "torchrun_shutdown_timeout", "worker_env"]
