"""The launcher's error tree. Only `cli.main()` catches `KubetrainError`."""

from __future__ import annotations


class KubetrainError(Exception):
    """A failure with a one-line message for the user."""


class SpecError(KubetrainError):
    """Bad flags, config or environment; nothing was created."""


class ClusterError(KubetrainError):
    """The cluster refused or is unreachable; keeps the API status when there is one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def one_line(message: str) -> str:
    """The message with control and line-break characters escaped: errors echo user input."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(message))
