"""Fault hooks for `launch chaos` and the commit-phase tests: files in KUBETRAIN_FAULTS_DIR.

Unset in production, where each hook costs one environment lookup. The file names and what
each does are in trainer.contract (FAULT_*), the one list both sides read.
"""

from __future__ import annotations

import os
import signal
import time

from trainer import contract
from trainer.errors import StorageError


def _fault_file(name: str) -> str | None:
    """The path of a fault-injection file when `launch chaos` has put it there, else None."""
    folder = os.environ.get(contract.ENV_FAULTS_DIR)
    path = os.path.join(folder, name) if folder else None
    return path if path and os.path.exists(path) else None


def injected_outage() -> None:
    """While FAULT_STORAGE_OUTAGE exists, every checkpoint write fails as in an outage."""
    if _fault_file(contract.FAULT_STORAGE_OUTAGE):
        raise StorageError(f"injected storage outage ({contract.ENV_FAULTS_DIR}/{contract.FAULT_STORAGE_OUTAGE})")


def injected_slow_commit() -> None:
    """Sleep the seconds FAULT_SLOW_COMMIT holds: widens the window for a kill before the manifest."""
    path = _fault_file(contract.FAULT_SLOW_COMMIT)
    if path:
        with open(path) as f:
            time.sleep(float(f.read().strip() or 0))


def kill_point(phase: str, step: int) -> None:
    """SIGKILL this process when FAULT_KILL_AT holds "<phase> <step>" (contract.COMMIT_PHASES)."""
    assert phase in contract.COMMIT_PHASES, phase
    path = _fault_file(contract.FAULT_KILL_AT)
    if path is None:
        return
    with open(path) as f:
        want = f.read().split()
    if want == [phase, str(step)]:
        os.kill(os.getpid(), signal.SIGKILL)
