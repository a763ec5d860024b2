"""The supervisor's side of the pod's control files (contract.CONTROL_*): what its ranks told it.

The ranks write them (trainer/checkpoint/control.py, trainer/worker.py, trainer/_torchrun.py),
each replaced whole; a file not (yet) there, or not whole, reads as nothing.
"""

from __future__ import annotations

import json
import os

from trainer import contract


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def read_errors(control: str) -> list[dict]:
    out = []
    for name in sorted(os.listdir(control)):
        if name.startswith(contract.CONTROL_ERROR_PREFIX):
            doc = read_json(os.path.join(control, name))
            if doc:
                out.append(doc)
    return out


def read_progress(control: str) -> dict[int, tuple[int, float]]:
    out = {}
    for name in os.listdir(control):
        if name.startswith(contract.CONTROL_PROGRESS_PREFIX) and not name.endswith(".tmp"):
            try:
                with open(os.path.join(control, name)) as f:
                    step, at = f.read().split()
                out[int(name[len(contract.CONTROL_PROGRESS_PREFIX):])] = (int(step), float(at))
            except (OSError, ValueError):
                continue
    return out
