"""What a checkpoint holds, and the copy that lets training go on while it uploads.

Replicated state (a plain or DDP model) is identical on every rank: rank 0
writes it once. Sharded state (FSDP2/DTensor or ShardedTensor) is written by
every rank through torch.distributed.checkpoint. Which one is decided by
the tensors the user's model returns, never by a flag. What differs per rank
(RNG streams, data-loader position) is always written by every rank.
"""

from __future__ import annotations

import random
import sys
from typing import Any, Mapping

import torch

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - very old torch
    DTensor = ()  # type: ignore[assignment]
try:
    from torch.distributed._shard.sharded_tensor import ShardedTensor
except ImportError:  # pragma: no cover
    ShardedTensor = ()  # type: ignore[assignment]


def iter_tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from iter_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_tensors(v)


def is_sharded(state: Any) -> bool:
    """Whether any tensor in `state` is a shard of a distributed tensor."""
    return any(isinstance(t, (DTensor, ShardedTensor)) for t in iter_tensors(state))


def snapshot(obj: Any) -> Any:
    """A deep copy of `obj` with every tensor copied to host memory.

    This is the only part of a save that blocks training. CUDA tensors are
    copied into pinned buffers with non_blocking copies and one synchronize,
    so the copies overlap each other.
    """
    any_cuda = False

    def copy(x: Any) -> Any:
        nonlocal any_cuda
        if isinstance(x, DTensor):
            local = copy(x.to_local())
            return DTensor.from_local(local, x.device_mesh, x.placements, run_check=False,
                                      shape=x.shape, stride=x.stride())
        if isinstance(x, torch.Tensor):
            x = x.detach()
            if x.device.type == "cuda":
                any_cuda = True
                out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
                out.copy_(x, non_blocking=True)
                return out
            return x.clone()
        if isinstance(x, Mapping):
            return type(x)((k, copy(v)) for k, v in x.items()) if isinstance(x, dict) else {k: copy(v) for k, v in x.items()}
        if isinstance(x, list):
            return [copy(v) for v in x]
        if isinstance(x, tuple):
            return tuple(copy(v) for v in x)
        return x

    out = copy(obj)
    if any_cuda:
        torch.cuda.synchronize()
    return out


def rng_state() -> dict[str, Any]:
    """Every RNG stream this process draws from."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    np = sys.modules.get("numpy")
    if np is not None:
        state["numpy"] = np.random.get_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
