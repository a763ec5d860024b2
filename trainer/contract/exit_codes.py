"""Exit codes of `python -m trainer`: what the operator's ExitCode policy retries."""

from __future__ import annotations

import enum

# --- exit codes ------------------------------------------------------------------


class ExitCode(enum.IntEnum):
    """Exit codes of `python -m trainer`.

    The operator's `restartPolicy: ExitCode` retries 128-255 and treats 1-127 as
    permanent. 128+N means "killed by signal N" (137: SIGKILL or the OOM killer).
    """

    OK = 0
    #: The user's code raised; retrying would fail the same way.
    USER_ERROR = 1
    #: Bad flags, URI or environment, or another live run writes the run folder (its writer lease);
    #: nothing ran.
    USAGE = 2
    #: SIGTERM or a cloud preemption notice; the checkpoint committed first.
    PREEMPTED = 143
    #: The watchdog saw no step progress for the hang timeout and killed the workers.
    HANG = 200
    #: Rendezvous, collective transport or storage failure: the infrastructure, not the code.
    INFRA = 201
    #: The crash-loop budget is spent: more than --max-restarts attempts in a row ended in a
    #: retryable failure without committing a new step (the restart ledger lists them).
    CRASH_LOOP = 99

    @staticmethod
    def for_signal(signum: int) -> int:
        return 128 + int(signum)


def is_retryable(code: int) -> bool:
    """Whether the operator's ExitCode policy retries this exit code."""
    return code >= 128


def describe_exit_code(code: int) -> str:
    """A short human description of an exit code, read through the contract."""
    import signal

    try:
        known = ExitCode(code)
    except ValueError:
        known = None
    if known is ExitCode.PREEMPTED:
        return "preempted (SIGTERM), checkpoint committed"
    if known is ExitCode.CRASH_LOOP:
        return "crash loop: restart budget (--max-restarts) spent without a new checkpoint"
    if known is not None and known not in (ExitCode.OK,):
        return known.name.lower().replace("_", " ")
    if known is ExitCode.OK:
        return "finished"
    if 128 < code < 128 + 65:
        try:
            return "killed by " + signal.Signals(code - 128).name
        except ValueError:
            return f"killed by signal {code - 128}"
    return "failed (permanent)" if code < 128 else "failed (retryable)"
