"""The runtime's error tree. Only `main()` catches `KubetrainError`.

`KubetrainError` and `one_line` live in the contract, so the launcher's errors can derive from the
same class without importing more of `trainer` than the contract; they are re-exported here.
"""

from __future__ import annotations

from trainer.contract.errors import KubetrainError, one_line

__all__ = ["CheckpointError", "KubetrainError", "StorageConfigError", "StorageError", "UsageError", "one_line"]


class UsageError(KubetrainError):
    """Bad flags, URI or environment: exit 2, nothing started."""


class StorageError(KubetrainError):
    """The object store failed after retries."""


class StorageConfigError(UsageError):
    """The object store refused us for a reason no retry changes (no such bucket, a wrong key or
    secret, no permission): exit 2, permanent, with the fix in the message."""


class CheckpointError(KubetrainError):
    """A checkpoint could not be saved, committed or restored."""

