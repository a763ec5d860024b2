"""A sampler whose position is part of the checkpoint.

torch's DistributedSampler restarts every epoch from its first batch, so a
resumed run would see the first samples of the epoch twice. This one shuffles
the same way for a given (seed, epoch) on every rank, counts what it handed
out, and skips exactly that on resume. Pass it to `Checkpointer(per_rank=...)`.
With DataLoader(num_workers>0) the loader prefetches ahead of the training
loop, so count consumed batches yourself there; num_workers=0 is exact.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Sampler

from trainer import dist


class ResumableSampler(Sampler[int]):
    def __init__(self, dataset_len: int, *, seed: int = 0, shuffle: bool = True,
                 rank: int | None = None, world_size: int | None = None) -> None:
        self.n = dataset_len
        self.seed, self.shuffle = seed, shuffle
        self.rank = dist.rank() if rank is None else rank
        self.world_size = dist.world_size() if world_size is None else world_size
        self.epoch = 0
        self.offset = 0  # indices of this epoch already handed out on this rank

    def __len__(self) -> int:
        return (self.n - self.rank + self.world_size - 1) // self.world_size

    def _order(self) -> list[int]:
        if not self.shuffle:
            order = list(range(self.n))
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        if self.offset >= len(self):
            # Saved right after the last batch of an epoch, before the loader
            # asked for more: that epoch is done.
            self.epoch, self.offset = self.epoch + 1, 0
        order = self._order()
        while self.offset < len(order):
            i = order[self.offset]
            self.offset += 1
            yield i
        self.epoch += 1
        self.offset = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
