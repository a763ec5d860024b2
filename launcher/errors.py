"""The launcher's error tree. Only `cli.main()` catches `KubetrainError`.

`KubetrainError` and `one_line` are the contract's, so the runtime's errors and ours are one tree.
"""

from __future__ import annotations

from trainer.contract import KubetrainError, one_line

__all__ = ["ClusterError", "KubetrainError", "SpecError", "one_line"]


class SpecError(KubetrainError):
    """Bad flags, config or environment; nothing was created."""


class ClusterError(KubetrainError):
    """The cluster refused or is unreachable; keeps the API status when there is one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

