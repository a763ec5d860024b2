"""A DataLoader worker killed by a signal is the machine's doing, whichever of torch's two checks sees it.

torch reports the death as "is killed by signal: Killed" when its SIGCHLD handler runs first, and as
"exited unexpectedly" (no signal named) when the rank's read of the workers' queue fails first, which a
loaded machine makes common. The rank wrapper (trainer/worker.py) must read both as 128+N. Here the
second path is taken for certain: the handler is put back to the default before the worker is killed.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from trainer import contract
from trainer.worker import loader_worker_signal

pytestmark = pytest.mark.runtime


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_worker_death_seen_as_exited_unexpectedly_is_still_its_signal():
    import torch
    from torch.utils.data import DataLoader

    # Plain lists, not tensors: a tensor batch the worker queued before its death is passed by file
    # descriptor through the worker's resource sharer, and reading it then fails with ConnectionResetError
    # (seen under load) before torch's own check can say the worker exited unexpectedly.
    it = iter(DataLoader(range(64), batch_size=1, num_workers=1, prefetch_factor=1, collate_fn=list))
    next(it)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler off: only the queue check remains
    (pid,) = [w.pid for w in it._workers]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not _zombie(pid):  # dead, not yet reaped: what torch's check then finds
        assert time.monotonic() < deadline, "the worker did not die"
        time.sleep(0.05)
    with pytest.raises(RuntimeError, match=r"exited unexpectedly") as info:
        for _ in range(64):
            next(it)
    assert "killed by signal" not in str(info.value)
    sig = loader_worker_signal(info.value)
    assert sig == signal.SIGKILL and contract.ExitCode.for_signal(sig) == 137
    del it, torch


def test_a_worker_killed_while_handing_over_a_tensor_batch_is_still_its_signal():
    import torch
    from torch.utils.data import DataLoader

    # A tensor batch goes by file descriptor, served by the worker: reading one the dead worker queued
    # fails with a connection error. torch raises that error as is when its check finds no dead worker,
    # which happens when the worker is not yet reaped at that instant (seen under load). Here that
    # instant is made certain: the check is told the worker lives; the wrapper must still find its signal.
    it = iter(DataLoader(torch.arange(64, dtype=torch.float32).view(64, 1), batch_size=1, num_workers=1,
                         prefetch_factor=1))
    next(it)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler off: only the queue check remains
    (worker,) = it._workers
    deadline = time.monotonic() + 30
    while it._data_queue.empty():  # the next batch is queued (its tensor still the worker's to hand over)
        assert time.monotonic() < deadline, "the worker queued no batch"
        time.sleep(0.05)
    worker.is_alive = lambda: True
    os.kill(worker.pid, signal.SIGKILL)
    while not _zombie(worker.pid):
        assert time.monotonic() < deadline, "the worker did not die"
        time.sleep(0.05)
    with pytest.raises((ConnectionError, EOFError, FileNotFoundError)) as info:
        next(it)
    sig = loader_worker_signal(info.value)
    assert sig == signal.SIGKILL and contract.ExitCode.for_signal(sig) == 137, repr(info.value)
    # Any other connection error is the script's: no DataLoader frame, no signal.
    assert loader_worker_signal(ConnectionResetError("peer gone")) is None
    del it, worker, torch
