"""What torchrun starts on each rank: the user's script, with its failure recorded.

`python -m trainer.worker train.py [args]` runs train.py as `__main__`. If it
raises, the traceback goes to the control folder (a RankError) and this rank
prints one line; the supervisor then prints the root cause once, instead of
one traceback per rank.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import runpy
import signal
import sys
import time
import traceback
from typing import Any

from trainer import contract
from trainer.control_folder import RankError, RankPid

#: Exception types that mean "a peer went away", not "this rank's code is wrong".
COMM_ERROR_TYPES = ("DistBackendError", "DistNetworkError", "DistStoreError")
COMM_ERROR_HINTS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                    "connection refused", "Socket Timeout", "NCCL communicator was aborted")


#: Raised by our checkpoint and storage layers: the object store, not the user's code.
INFRA_ERROR_TYPES = ("CheckpointError", "StorageError")
#: The object store refused the configuration (bucket, credentials): permanent, no retry helps.
CONFIG_ERROR_TYPES = ("StorageConfigError",)


#: torch.utils.data's words when a DataLoader worker process of this rank died by a signal (raised as a
#: RuntimeError by torch's SIGCHLD handler, _utils.signal_handling / _error_if_any_worker_fails):
#: "DataLoader worker (pid 123) is killed by signal: Killed." The signal is strsignal's text.
_LOADER_KILLED_RE = re.compile(r"DataLoader worker \(pid \d+\) is killed by signal: (.+?)\.?\s*$")


#: The same death seen by the other path, when the rank's read of the workers' queue failed before the
#: SIGCHLD handler ran (a worker killed mid-write, more often on a loaded machine):
#: "DataLoader worker (pid(s) 123, 124) exited unexpectedly". It names no signal; see _failed_workers_signal.
_LOADER_EXITED_RE = re.compile(r"DataLoader worker \(pid\(s\) [\d, ]+\) exited unexpectedly$")


def _failed_workers_signal(tb: Any) -> int | None:
    """The signal that ended a worker in the `failed_workers` list of the torch frame that raised
    "exited unexpectedly" (_MultiProcessingDataLoaderIter._try_get_data): its multiprocessing
    Process, already reaped there, keeps the status as exitcode -N. None when no frame has one."""
    while tb is not None:
        for w in tb.tb_frame.f_locals.get("failed_workers") or ():
            code = getattr(w, "exitcode", None)
            if isinstance(code, int) and code < 0:
                return -code
        tb = tb.tb_next
    return None


#: How long a rank waits for a DataLoader worker it lost mid-handover to be reaped (see _dead_loader_signal).
LOADER_REAP_WAIT_S = 2.0
#: The DataLoader iterator's methods a handover error passes through (`self` there has `_workers`).
_LOADER_FRAMES = frozenset({"_try_get_data", "_get_data"})
#: With pin_memory=True the handover happens in torch's pin-memory thread, which dies of the same
#: error; the rank then reads this (torch.utils.data.dataloader._get_data).
_PIN_THREAD_DIED_RE = re.compile(r"^Pin memory thread exited unexpectedly")


def _dead_loader_signal(exc: BaseException, wait_s: float = LOADER_REAP_WAIT_S) -> int | None:
    """The signal that ended a DataLoader worker when `exc` is the rank's half of that worker's death.

    A worker killed while the rank unpickles its batch (its tensors arrive as file descriptors the
    worker serves) makes the rank's read fail with a connection error, raised as is by torch's
    _try_get_data when, at that instant, the dying worker is not yet reaped: it names no worker
    (with pin_memory=True, the pin-memory thread dies of it and the rank reads that instead).
    The iterator in that frame has the workers; one reaped within `wait_s` with exitcode -N is it.
    """
    pinning = isinstance(exc, RuntimeError) and _PIN_THREAD_DIED_RE.search(str(exc))
    if not (pinning or isinstance(exc, (ConnectionError, EOFError, FileNotFoundError))):
        return None
    tb, workers = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_name in _LOADER_FRAMES:
            workers = getattr(tb.tb_frame.f_locals.get("self"), "_workers", None)
        tb = tb.tb_next
    if not workers:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        for w in workers:
            code = getattr(w, "exitcode", None)
            if isinstance(code, int) and code < 0:
                return -code
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def loader_worker_signal(exc: BaseException) -> int | None:
    """The signal that killed one of this rank's DataLoader workers, when that is what `exc` says.

    A loader worker killed by a signal (the OOM killer, a node's pressure) is the machine's doing,
    not the script's: the rank exits 128+N like a killed rank, and the operator retries it. torch
    reports it in one of two words, by which of its checks saw the death first; both count, and so
    does a connection error from the worker's half of a batch handover (_dead_loader_signal).
    """
    if not isinstance(exc, RuntimeError) or _PIN_THREAD_DIED_RE.search(str(exc)):
        return _dead_loader_signal(exc)
    if _LOADER_EXITED_RE.search(str(exc)):
        return _failed_workers_signal(exc.__traceback__)
    m = _LOADER_KILLED_RE.search(str(exc))
    if not m:
        return None
    words = m.group(1).strip()
    for sig in signal.valid_signals():
        if words in (signal.strsignal(sig), getattr(sig, "name", "")) or words == str(int(sig)):
            return int(sig)
    return None


def is_comm_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return type(exc).__name__ in COMM_ERROR_TYPES or any(h.lower() in text.lower() for h in COMM_ERROR_HINTS)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m trainer.worker SCRIPT [ARGS...]", file=sys.stderr)
        return int(contract.ExitCode.USAGE)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.WARNING, format=f"[kubetrain rank {rank}] %(message)s")
    logging.getLogger("kubetrain").setLevel(logging.INFO)  # ours at INFO; botocore & co. only when they warn
    script = argv[0]
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    control = os.environ.get(contract.ENV_CONTROL_DIR)
    if control:
        RankPid.of_this_process(int(rank)).write(control)
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return int(contract.ExitCode.USER_ERROR)
    except BaseException as e:  # KeyboardInterrupt too: it is this rank's end
        sig = loader_worker_signal(e)
        if sig is not None:
            # No error record: the supervisor would count it as the user's error. The exit code
            # says it all: 128+N, as if the rank itself had been killed.
            code = contract.ExitCode.for_signal(sig)
            print(f"[kubetrain rank {rank}] {type(e).__name__}: {e} (an infrastructure fault: exit {code}, "
                  "retried)", file=sys.stderr)
            return code
        if control:
            RankError(rank=int(rank), type=type(e).__name__, message=str(e), time=time.time(),
                      traceback=traceback.format_exc(), comm_error=is_comm_error(e),
                      infra_error=type(e).__name__ in INFRA_ERROR_TYPES,
                      config_error=type(e).__name__ in CONFIG_ERROR_TYPES).write(control)
            print(f"[kubetrain rank {rank}] {type(e).__name__}: {e}", file=sys.stderr)
        else:
            traceback.print_exc()
        return int(contract.ExitCode.USER_ERROR)
    return 0


def exit_now(code: int) -> None:
    """Exit without interpreter finalization, after the script's atexit handlers.

    A script that ends without destroy_process_group() leaves gloo's threads
    joinable, and finalization then aborts the process (SIGABRT, "terminate
    called without an active exception"), replacing the real exit code.
    """
    run_exit_handlers()
    os._exit(code)


def run_exit_handlers() -> None:
    """The script's atexit handlers, then the streams flushed: what exit_now does before os._exit."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
