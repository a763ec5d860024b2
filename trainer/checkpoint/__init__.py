"""Checkpoint API for train.py: `from trainer.checkpoint import Checkpointer`.

    api         the Checkpointer facade: wires the parts below together
    config      CheckpointConfig (settings.py's checkpoint settings) and the run the parts share
    agreement   the ranks' stop agreement and SIGTERM
    saver       snapshot, write, commit (`latest` is the commit point), prune
    restore     the one restore policy (own checkpoints and warm starts), over loader
    loader      fetch and verify one rank's files of a step: a StepVerdict
    objects     the live model/optimizer/... and applying loaded state to them
    layout      the folder protocol as pure functions; state: snapshots and RNG
    handoff     one download per node; prefetch: the supervisor's early download
    notices     what a rank tells its supervisor (progress, commits, preempted)
    sweep       leftovers of killed writers; fault_hooks: for `launch chaos` and tests

Loads torch only when the Checkpointer is asked for: the supervisor imports
`layout` and `prefetch` from here and must stay light (it is PID 1 of a pod).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Checkpointer", "CheckpointConfig"]


def __getattr__(name: str) -> Any:
    if name == "Checkpointer":
        from trainer.checkpoint.api import Checkpointer

        return Checkpointer
    if name == "CheckpointConfig":
        from trainer.checkpoint.config import CheckpointConfig

        return CheckpointConfig
    raise AttributeError(f"module 'trainer.checkpoint' has no attribute {name!r}")
