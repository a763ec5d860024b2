"""kubetrain's in-container runtime.

Kept free of heavy imports: the launcher imports `trainer.contract`, which
must not load torch. The user-facing names load lazily:

    from trainer import Checkpointer, ResumableSampler
"""

from __future__ import annotations

from typing import Any

__all__ = ["Checkpointer", "ResumableSampler"]


def __getattr__(name: str) -> Any:
    if name == "Checkpointer":
        from trainer.checkpoint import Checkpointer

        return Checkpointer
    if name == "ResumableSampler":
        from trainer.data import ResumableSampler

        return ResumableSampler
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
