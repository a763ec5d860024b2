"""Checkpoint API for train.py: `from trainer.checkpoint import Checkpointer`."""

from trainer.checkpoint.manager import Checkpointer, CheckpointConfig

__all__ = ["Checkpointer", "CheckpointConfig"]
