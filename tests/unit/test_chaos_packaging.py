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
