"""What a checkpoint holds, and the copy that lets training go on while it uploads.

Replicated state (a plain or DDP model) is identical on every rank: rank 0
writes it once. Sharded state (FSDP2/DTensor or ShardedTensor) is written by
every rank through torch.distributed.checkpoint. Which one is decided by
the tensors the user's model returns, never by a flag. What differs per rank
(RNG streams, data-loader position) is always written by every rank.
"""

from __future__ import annotations

import dataclasses
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


def tensor_leaves(obj: Any, path: tuple = ()):
    """(path, tensor) for every tensor in `obj`, a DTensor as its local shard: the paths `snapshot` keys buffers by."""
    if isinstance(obj, DTensor):
        yield from tensor_leaves(obj.to_local(), path)
    elif isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from tensor_leaves(v, path + (k,))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensor_leaves(v, path + (i,))


@dataclasses.dataclass(frozen=True)
class BufferSpec:
    path: tuple
    shape: torch.Size
    dtype: torch.dtype
    pinned: bool


def buffer_specs(obj: Any) -> list[BufferSpec]:
    """What `snapshot` will need for `obj`: read on the training thread, allocated off it."""
    return [BufferSpec(path, t.shape, t.dtype, t.device.type == "cuda") for path, t in tensor_leaves(obj)]


def allocate(specs: list[BufferSpec], buffers: dict) -> None:
    """Allocate and fault in the host buffers `snapshot` will copy into.

    The first save otherwise pays for it inside the stall: on an H200 the first
    save of a 4 GiB CUDA state took 1.9 s (pinned allocation) against 0.11 s for
    later ones; on this CPU machine 125 ms against 34 ms for 16 MiB (page faults).
    Meant to run on a background thread right after training starts.
    """
    for spec in specs:
        buf = buffers.get(spec.path)
        if buf is not None and buf.shape == spec.shape and buf.dtype == spec.dtype:
            continue
        buf = torch.empty(spec.shape, dtype=spec.dtype, pin_memory=spec.pinned)
        buf.zero_()  # touch every page now rather than inside the first snapshot's copy
        buffers[spec.path] = buf


def snapshot(obj: Any, buffers: dict | None = None) -> Any:
    """A deep copy of `obj` with every tensor copied to host memory.

    This is the only part of a save that blocks training. With `buffers`
    (a dict kept between saves) each tensor is copied into the host buffer
    of the previous save at the same place in `obj`: copying into memory
    that is already mapped took 3.5 ms for 64 MiB here, against 24 ms for
    clone(), which page-faults fresh memory in (the same choice as DCP's
    cache_staged_state_dict). The caller must not reuse the buffers while a
    previous snapshot is still being written. CUDA tensors go into pinned
    buffers with non_blocking copies and one synchronize.
    """
    any_cuda = False

    def copy(x: Any, path: tuple) -> Any:
        nonlocal any_cuda
        if isinstance(x, DTensor):
            local = copy(x.to_local(), path)
            return DTensor.from_local(local, x.device_mesh, x.placements, run_check=False,
                                      shape=x.shape, stride=x.stride())
        if isinstance(x, torch.Tensor):
            x = x.detach()
            cuda = x.device.type == "cuda"
            any_cuda |= cuda
            buf = buffers.get(path) if buffers is not None else None
            if buf is None or buf.shape != x.shape or buf.dtype != x.dtype:
                buf = torch.empty(x.shape, dtype=x.dtype, pin_memory=cuda)
                if buffers is not None:
                    buffers[path] = buf
            buf.copy_(x, non_blocking=cuda)
            return buf
        if isinstance(x, Mapping):
            return {k: copy(v, path + (k,)) for k, v in x.items()}
        if isinstance(x, list):
            return [copy(v, path + (i,)) for i, v in enumerate(x)]
        if isinstance(x, tuple):
            return tuple(copy(v, path + (i,)) for i, v in enumerate(x))
        return x

    out = copy(obj, ())
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
