"""The control folder a supervisor shares with its ranks (contract.CONTROL_*): the readers and
writers every side uses, so each file's format is written down once.

The ranks write their files (trainer/checkpoint/control.py, trainer/worker.py, trainer/torchrun_main.py),
each replaced whole; a file not (yet) there, or not whole, reads as nothing.

The supervisor's watchdog and `launch chaos` read the same progress heartbeats; `launch chaos`
finds a rank's process by the PID its wrapper recorded, never by looking for RANK in /proc (a
rank's DataLoader workers inherit RANK and the command line).
"""

from __future__ import annotations

import json
import os

from trainer import contract
from trainer.processes import start_time


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def read_errors(control: str) -> list[dict]:
    """The ranks' first exceptions (JSON), in rank-file order."""
    out = []
    for name in sorted(os.listdir(control)):
        if name.startswith(contract.CONTROL_ERROR_PREFIX):
            doc = read_json(os.path.join(control, name))
            if doc:
                out.append(doc)
    return out


def _per_rank(control: str, prefix: str) -> dict[int, list[str]]:
    """{rank: the fields of its `<prefix><rank>` file}, for every whole one (a temp file is skipped)."""
    out: dict[int, list[str]] = {}
    try:
        names = os.listdir(control)
    except OSError:
        return out
    for name in names:
        if name.startswith(prefix) and not name.endswith(".tmp"):
            try:
                with open(os.path.join(control, name)) as f:
                    out[int(name[len(prefix):])] = f.read().split()
            except (OSError, ValueError):
                continue
    return out


def read_progress(control: str) -> dict[int, tuple[int, float]]:
    """{rank: (step, unix time)} of the ranks' heartbeats ("<step> <time>"); a half-written one is skipped."""
    out = {}
    for rank, fields in _per_rank(control, contract.CONTROL_PROGRESS_PREFIX).items():
        try:
            step, at = fields
            out[rank] = (int(step), float(at))
        except ValueError:
            continue
    return out


def write_rank_pid(control: str, rank: int) -> None:
    """Record this process as rank `rank` ("<pid> <start time>"), atomically."""
    pid = os.getpid()
    path = os.path.join(control, f"{contract.CONTROL_PID_PREFIX}{rank}")
    with open(path + ".tmp", "w") as f:
        f.write(f"{pid} {start_time(pid) or 0}\n")
    os.replace(path + ".tmp", path)


def read_rank_pids(control: str) -> dict[int, int]:
    """{rank: pid} of the recorded ranks that are still the same live process (a reused PID has
    another start time)."""
    out = {}
    for rank, fields in _per_rank(control, contract.CONTROL_PID_PREFIX).items():
        try:
            pid, started = (int(x) for x in fields)
        except ValueError:
            continue
        if start_time(pid) == started:
            out[rank] = pid
    return out
