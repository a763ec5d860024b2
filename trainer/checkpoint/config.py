"""Where and how often to checkpoint, and the run every part of a Checkpointer works on."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from trainer import settings
from trainer.checkpoint.node_copy import NodeCopy
from trainer.errors import CheckpointError
from trainer.storage import Storage

#: Seconds a checkpoint collective may wait for a slow rank before it fails.
COORD_TIMEOUT_S = 1800.0


def _default(field: str) -> Any:
    """A Checkpointer setting's default, from the one table (trainer/settings.py)."""
    return next(s.default for s in settings.SETTINGS if s.checkpoint == field)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Where and how often to checkpoint. Each field is a row of trainer/settings.py (its KUBETRAIN_*
    variable, default and bounds), except max_failures, which only the Python API sets."""

    uri: str = _default("uri")
    run_id: str = _default("run_id")
    every_steps: int = _default("every_steps")
    every_seconds: float = _default("every_seconds")
    keep: int = _default("keep")
    #: Seconds restore retries a step it could not read for a storage error before giving up (exit INFRA).
    storage_timeout: float = _default("storage_timeout")
    #: When the run has no checkpoint yet: a run folder URI, or WARM_START_LATEST (see restore()).
    warm_start_from: str | None = _default("warm_start_from")
    warm_start_optimizer: bool = _default("warm_start_optimizer")
    #: This node's copy of the newest committed step (node_copy.py): its folder (None: in the spool), its bound.
    node_copy_dir: str | None = _default("node_copy_dir")
    #: None (unset): off; the supervisor sets it where something reads it back (torchrun_command.node_copy_bytes).
    node_copy_max_bytes: int | None = _default("node_copy_max_bytes")
    max_failures: int = 3

    def __post_init__(self) -> None:
        settings.check_checkpoint(dataclasses.asdict(self), CheckpointError)
        if not self.run_id or "/" in self.run_id:
            raise CheckpointError(f"run id must be a non-empty name without '/', got {self.run_id!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> "CheckpointConfig":
        """Each setting from `overrides` (not None), else its KUBETRAIN_* variable, else its default."""
        extra = {"max_failures": overrides["max_failures"]} if overrides.get("max_failures") else {}
        return cls(**settings.from_env(env, overrides), **extra)


@dataclasses.dataclass(frozen=True)
class CheckpointRun:
    """What the saver, the restore policy and the loader share: the run's folder, this rank, its groups.

    Two gloo groups: the per-step stop check (and restore) runs on the training thread, the commit
    on the upload thread; one group must never serve both.
    """

    config: CheckpointConfig
    storage: Storage
    run_uri: str
    rank: int
    world_size: int
    control_group: Any
    commit_group: Any
    #: Where this rank keeps and first looks for the newest committed step's files; None: off.
    node: NodeCopy | None = None
