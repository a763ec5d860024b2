"""Checkpoint API for train.py: `from trainer.checkpoint import Checkpointer`.

Loads torch only when the Checkpointer is asked for: the supervisor imports
`layout` and `prefetch` from here and must stay light (it is PID 1 of a pod).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Checkpointer", "CheckpointConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from trainer.checkpoint import manager

        return getattr(manager, name)
    raise AttributeError(f"module 'trainer.checkpoint' has no attribute {name!r}")
