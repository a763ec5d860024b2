"""The chaos tooling is test tooling: outside the runtime package, and the rank wrapper's one rule for it."""

from __future__ import annotations

import os
import re
import signal

import pytest

from tests.helpers import REPO
from trainer import contract
from trainer.worker import loader_worker_signal


def test_the_runtime_never_imports_the_chaos_tooling_and_the_image_does_not_copy_it():
    for folder, _, files in os.walk(os.path.join(REPO, "trainer")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    assert not re.search(r"^\s*(from|import)\s+kubetrain_chaos", f.read(), re.M), name
    with open(os.path.join(REPO, "images", "Dockerfile")) as f:
        copied = re.findall(r"^COPY (\S+)", f.read(), re.M)
    assert "kubetrain_chaos" not in copied and "trainer" in copied


@pytest.mark.parametrize("message,code", [
    ("DataLoader worker (pid 4242) is killed by signal: Killed. ", 137),
    ("DataLoader worker (pid 7) is killed by signal: Terminated. ", 143),
    ("DataLoader worker (pid 7) is killed by signal: Segmentation fault. ", 139),
])
def test_a_dataloader_worker_killed_by_a_signal_is_an_infrastructure_exit(message, code):
    sig = loader_worker_signal(RuntimeError(message))
    assert sig is not None and contract.ExitCode.for_signal(sig) == code
    assert contract.is_retryable(code)


@pytest.mark.parametrize("exc", [
    RuntimeError("DataLoader worker (pid 7) exited unexpectedly with exit code 1. Details are lost"),
    RuntimeError("CUDA error: device-side assert triggered"),
    ValueError("DataLoader worker (pid 7) is killed by signal: Killed. "),
])
def test_other_errors_stay_the_users(exc):
    assert loader_worker_signal(exc) is None


def test_signal_words_are_the_c_librarys():
    assert signal.strsignal(signal.SIGKILL) == "Killed"  # what torch's message carries (strsignal)


class _Worker:
    def __init__(self, exitcode):
        self.exitcode = exitcode


class _Iterator:
    """Stands in for torch's _MultiProcessingDataLoaderIter: what the wrapper reads from its frame."""

    def __init__(self, *codes):
        self._workers = [_Worker(c) for c in codes]

    def _get_data(self):
        raise RuntimeError("Pin memory thread exited unexpectedly")


def _raised(it):
    try:
        it._get_data()
    except RuntimeError as e:
        return e


def test_a_pin_memory_thread_killed_by_a_dead_workers_handover_is_that_workers_signal():
    from trainer.worker import _dead_loader_signal

    # torch's pin-memory thread dies of the handover error a killed worker leaves (pin_memory=True, a GPU
    # node's usual loader); the rank reads "Pin memory thread exited unexpectedly".
    assert loader_worker_signal(_raised(_Iterator(None, -9))) == signal.SIGKILL
    # No worker died (the thread's own fault): the user's, after the bounded wait.
    assert _dead_loader_signal(_raised(_Iterator(None, 0)), wait_s=0.1) is None
    assert loader_worker_signal(RuntimeError("Pin memory thread exited unexpectedly")) is None  # no loader frame
