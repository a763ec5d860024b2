"""The runtime's error tree. Only `main()` catches `KubetrainError`."""

from __future__ import annotations


class KubetrainError(Exception):
    """A failure with a message for the user; `main()` prints it on one line."""


class UsageError(KubetrainError):
    """Bad flags, URI or environment: exit 2, nothing started."""


class StorageError(KubetrainError):
    """The object store failed after retries."""


class StorageConfigError(UsageError):
    """The object store refused us for a reason no retry changes (no such bucket, a wrong key or
    secret, no permission): exit 2, permanent, with the fix in the message."""


class CheckpointError(KubetrainError):
    """A checkpoint could not be saved, committed or restored."""


def one_line(message: str) -> str:
    """The message with control and line-break characters escaped: errors echo user input."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(message))
