"""A run folder on local disk as the chaos check sees it: which steps verify, what `latest` names,
how far a commit got, and the damage corrupt-checkpoint does. The layout's rules are the
runtime's own (trainer.checkpoint.layout); this module only reads files.
"""

from __future__ import annotations

import hashlib
import os

from kubetrain_chaos import record
from trainer import contract
from trainer.checkpoint import layout


def _names(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def manifest(run_dir: str, step: int) -> layout.Manifest | None:
    try:
        with open(os.path.join(run_dir, contract.step_dir_name(step), contract.MANIFEST_NAME), "rb") as f:
            return layout.manifest_from_bytes(f.read(), expect_step=step)
    except (OSError, ValueError, KeyError):
        return None


def manifest_digest(run_dir: str, step: int) -> str:
    """The sha256 of the step's manifest bytes: it changes when a later attempt writes the step anew."""
    try:
        with open(os.path.join(run_dir, contract.step_dir_name(step), contract.MANIFEST_NAME), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def intact(run_dir: str, step: int) -> bool:
    """The step's manifest is valid and every file it lists has its size and sha256."""
    m = manifest(run_dir, step)
    if m is None:
        return False
    step_dir = os.path.join(run_dir, contract.step_dir_name(step))
    for name, info in m.files.items():
        try:
            with open(os.path.join(step_dir, name), "rb") as f:
                data = f.read()
        except OSError:
            return False
        if len(data) != info.size or hashlib.sha256(data).hexdigest() != info.sha256:
            return False
    return True


def intact_steps(run_dir: str) -> list[int]:
    """Steps whose manifest and files verify, ascending (committed or not: `latest` says which is)."""
    return [s for s in layout.steps_in_listing(_names(run_dir)) if intact(run_dir, s)]


def latest(run_dir: str) -> int | None:
    """The step `latest` names: the run's committed step."""
    try:
        with open(os.path.join(run_dir, contract.LATEST_NAME), "rb") as f:
            return layout.parse_latest(f.read())
    except OSError:
        return None


def latest_tmp(run_dir: str) -> int | None:
    """The step a leftover `latest.tmp-*` holds (a replace of `latest` cut short), or None."""
    for name in sorted(_names(run_dir)):
        if name.startswith(contract.LATEST_NAME + ".tmp"):
            try:
                with open(os.path.join(run_dir, name), "rb") as f:
                    step = layout.parse_latest(f.read())
            except OSError:
                continue
            if step is not None:
                return step
    return None


def partial_step(run_dir: str, known: set[int]) -> int | None:
    """A step folder, not in `known`, with files but no manifest yet: a save between its files and its commit."""
    for step in layout.steps_in_listing(_names(run_dir)):
        if step in known:
            continue
        entries = _names(os.path.join(run_dir, contract.step_dir_name(step)))
        if entries and contract.MANIFEST_NAME not in entries and not any(e.endswith(".tmp") for e in entries):
            return step
    return None


def commit_phase(run_dir: str, step: int) -> str:
    """How far the commit of `step` got, read from the folder once every process is gone."""
    if latest(run_dir) == step:
        return record.PHASE_COMMITTED
    if manifest(run_dir, step) is None:
        return record.PHASE_FILES
    return record.PHASE_LATEST if latest_tmp(run_dir) == step else record.PHASE_MANIFEST


def corrupt_step(run_dir: str, step: int) -> str:
    """Flip bytes in the middle of the step's largest file; return its name."""
    m = manifest(run_dir, step)
    assert m is not None
    name = max(m.files, key=lambda k: m.files[k].size)
    with open(os.path.join(run_dir, contract.step_dir_name(step), name), "r+b") as f:
        f.seek(m.files[name].size // 2)
        b = f.read(8)
        f.seek(m.files[name].size // 2)
        f.write(bytes(x ^ 0xFF for x in b))
    return name
