"""What happened -> exit code: the facts of a finished run mapped onto the contract (pure)."""

from __future__ import annotations

import dataclasses
import operator
import signal
from typing import Sequence

from trainer.contract import ExitCode
from trainer.control_folder import Preempted, RankError, TorchrunResult

_BY_TIME = operator.attrgetter("time")  # the earliest failure is the root cause


@dataclasses.dataclass(frozen=True)
class Outcome:
    code: int
    summary: str
    root_cause: str | None = None  # a traceback, printed once
    #: What the exit code means this time, where the contract's general words would be untrue
    #: (143 without a committed checkpoint); None: contract.describe_exit_code.
    meaning: str | None = None
    #: A rank was lost (killed by a signal, hung, its DataLoader worker killed, its peers gone), not
    #: the user's code or the configuration: a fresh torchrun in the same pod may recover (in_place.py).
    rank_lost: bool = False


def classify(*, torchrun_rc: int, result: TorchrunResult | None, errors: Sequence[RankError],
             preempted: Preempted | None, stop_reason: str | None, hang: str | None) -> Outcome:
    """Map the facts of a finished run onto the exit-code contract."""
    if hang:
        return Outcome(ExitCode.HANG, f"hang: {hang}; workers killed", rank_lost=True)
    if preempted is not None:
        return Outcome(ExitCode.PREEMPTED, f"preempted ({stop_reason or 'ranks on another node were stopping'}); "
                       f"checkpoint step {preempted.step} committed")
    if result and result.usage_error:  # before any worker started: a retry fails the same way
        return Outcome(ExitCode.USAGE, f"torchrun refused its arguments: {result.usage_error}")
    if result and result.incompatible_torch:
        return Outcome(ExitCode.USAGE, f"this torch cannot run torchrun: {result.incompatible_torch}")
    if torchrun_rc == 0:
        return Outcome(ExitCode.OK, "finished")
    failures = result.failures if result else ()
    config = sorted((e for e in errors if e.config_error), key=_BY_TIME)
    if config:  # the object store refused the bucket or credentials: permanent, whoever died after it
        return Outcome(ExitCode.USAGE, config[0].message)
    user = sorted((e for e in errors if not e.comm_error and not e.infra_error), key=_BY_TIME)
    infra = sorted((e for e in errors if e.infra_error), key=_BY_TIME)
    killed = [f for f in failures if f.exitcode < 0 and -f.exitcode not in (signal.SIGTERM, signal.SIGINT)]
    if killed and not user:
        f = killed[0]
        return Outcome(ExitCode.for_signal(-f.exitcode), f"rank {f.rank} was killed by {f.signal}", rank_lost=True)
    if stop_reason is not None:
        return Outcome(ExitCode.PREEMPTED, f"stopped ({stop_reason}) before a checkpoint committed; the next run "
                       "resumes from the last committed one",
                       meaning=f"stopped ({stop_reason}), no checkpoint committed by this run")
    if user:
        e = user[0]
        return Outcome(ExitCode.USER_ERROR, f"rank {e.rank} raised {e.type}: {e.message}", e.traceback)
    if infra:  # checkpoint storage kept failing: retry later rather than fail the job for good
        e = infra[0]
        return Outcome(ExitCode.INFRA, f"rank {e.rank}: {e.type}: {e.message}")
    if killed:
        f = killed[0]
        return Outcome(ExitCode.for_signal(-f.exitcode), f"rank {f.rank} was killed by {f.signal}", rank_lost=True)
    # A rank that exited on its own (sys.exit(N)) rather than because a peer vanished.
    comm_ranks = {e.rank for e in errors if e.comm_error}
    direct = sorted((f for f in failures if f.exitcode > 0 and f.rank not in comm_ranks), key=_BY_TIME)
    if direct:
        f = direct[0]
        if f.exitcode == ExitCode.CRASH_LOOP:
            # 99 says "the restart ledger stopped this run" to `launch status` and the ledger; a script's
            # own 99 must not read as that. Both are permanent, so only the message changes.
            return Outcome(ExitCode.USER_ERROR, f"rank {f.rank} exited with {f.exitcode}, which kubetrain "
                           f"reserves for a crash loop: exit {int(ExitCode.USER_ERROR)} instead")
        # 128+N from a rank: trainer/worker.py's code for a DataLoader worker of it killed by signal N.
        return Outcome(f.exitcode if f.exitcode < 256 else ExitCode.USER_ERROR,
                       f"rank {f.rank} exited with {f.exitcode}", rank_lost=128 < f.exitcode < 256)
    if any(f.exitcode < 0 for f in failures):
        f = next(f for f in failures if f.exitcode < 0)
        return Outcome(ExitCode.for_signal(-f.exitcode), f"rank {f.rank} was killed by {f.signal}")
    if errors:
        e = sorted(errors, key=_BY_TIME)[0]
        return Outcome(ExitCode.INFRA, f"rank {e.rank} lost its peers: {e.type}: {e.message}", rank_lost=True)
    if result and result.agent_error:
        return Outcome(ExitCode.INFRA, f"torchrun failed: {result.agent_error}")
    if torchrun_rc < 0:
        return Outcome(ExitCode.for_signal(-torchrun_rc), f"torchrun was killed by signal {-torchrun_rc}")
    return Outcome(torchrun_rc if torchrun_rc >= 128 else ExitCode.INFRA, f"torchrun exited with {torchrun_rc}")
