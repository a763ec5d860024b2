"""Small helpers over torch.distributed that also work in a single process.

Checkpoint coordination runs on its own gloo groups: the training group may
be NCCL (CPU tensors cannot travel on it), and the background upload thread
must never share a group with collectives of the training loop.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def local_rank() -> int:
    """This rank's index on its node (torchrun's LOCAL_RANK): 0 is the one that speaks for the pod."""
    return int(os.environ.get("LOCAL_RANK") or 0)


def new_gloo_group(timeout_s: float) -> Any:
    """A gloo group over every rank; a collective call, so every rank must call it."""
    if not initialized():
        return None
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


def all_reduce_max(values: list[int], group: Any) -> list[int]:
    """Element-wise max across ranks (one collective)."""
    return PendingMax(values, group).result()


class PendingMax:
    """An element-wise max across ranks, started now and read later: the collective overlaps what runs between.

    Every rank must start the same sequence of them on `group`, and read each before starting another
    collective there (gloo matches collectives by order).
    """

    def __init__(self, values: list[int], group: Any) -> None:
        self._t = torch.tensor(values, dtype=torch.int64)
        self._work = None if group is None else dist.all_reduce(self._t, op=dist.ReduceOp.MAX, group=group,
                                                                 async_op=True)

    def result(self) -> list[int]:
        if self._work is not None:
            self._work.wait()
            self._work = None
        return [int(v) for v in self._t.tolist()]


def all_true(ok: bool, group: Any) -> bool:
    return all_reduce_max([0 if ok else 1], group)[0] == 0


def broadcast_object(obj: Any, group: Any, src: int = 0) -> Any:
    if group is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def gather_objects(obj: Any, group: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (None elsewhere)."""
    if group is None:
        return [obj]
    out = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0, group=group)
    return out
