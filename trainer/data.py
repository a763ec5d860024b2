"""A sampler whose position is part of the checkpoint, and stays true when the number of ranks changes.

The position is the epoch, its seed, and how many samples of the epoch all ranks together have
consumed. Every epoch has one order (a permutation drawn from seed and epoch); the samples not
consumed yet are dealt round-robin to the ranks of *this* run, so a resume with the same ranks
continues each rank's stream exactly, and one with more or fewer ranks re-partitions the rest of
the epoch: every sample of it is seen once (a DataLoader's drop_last still drops its last partial
batch of each rank's share).

Rules: the position is the same on every rank, so pass the sampler as replicated state,
`Checkpointer(extra={"sampler": sampler})` (in `per_rank=` it resumes only while the number of
ranks stays the same). A sample counts as consumed when the loop gets it:
from the sampler itself, or, behind a DataLoader with workers (which prefetch ahead of the loop),
from `sampler.batches(loader)`. Per-sample randomness in workers comes from the sample
(`sample_seed(seed, epoch, index)`; `batches()` calls the dataset's `set_epoch` before each epoch,
so persistent_workers=False), and the DataLoader gets its own `generator`. The global position is
this rank's start plus world_size x what it consumed since: exact when every rank consumes the same
number per step (data parallel). The recipe is in README.md; why not DistributedSampler:
docs/architecture.md, "Decisions".
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Iterator

import torch
from torch.utils.data import Sampler

from trainer import dist


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample `index`'s randomness in `epoch`: the same whichever rank or loader worker draws it."""
    digest = hashlib.sha256(f"kubetrain-sample/{seed}/{epoch}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ResumableSampler(Sampler[int]):
    def __init__(self, dataset_len: int, *, seed: int = 0, shuffle: bool = True,
                 rank: int | None = None, world_size: int | None = None) -> None:
        self.n = dataset_len
        self.seed, self.shuffle = seed, shuffle
        self.rank = dist.rank() if rank is None else rank
        self.world_size = dist.world_size() if world_size is None else world_size
        self.epoch = 0
        # The global position is _start + world_size * _taken: where this rank's
        # current share of the epoch was cut, and how much of that share it consumed.
        self._start = 0
        self._taken = 0
        self._loop_counts = False  # batches() counts what the loop takes; __iter__ then counts nothing

    @property
    def consumed(self) -> int:
        """Samples of this epoch consumed by all ranks together."""
        return min(self.n, self._start + self.world_size * self._taken)

    def __len__(self) -> int:
        """This rank's share of what is left of the epoch."""
        rest = self.n - self._start
        return max(0, (rest - self.rank + self.world_size - 1) // self.world_size)

    def _share(self) -> list[int]:
        if not self.shuffle:
            order = list(range(self.n))
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        return order[self._start + self.rank::self.world_size]

    def _cut(self) -> None:
        """Deal what is left of the epoch to this run's ranks, from the global position."""
        self._start, self._taken = self.consumed, 0
        if len(self) == 0:
            # This rank's share of the epoch is done (say, saved right after its last
            # sample, before the loop asked for more): the next epoch starts.
            self.epoch, self._start = self.epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        if self._loop_counts:  # batches() cut the share and counts; a prefetching worker may run ahead
            yield from self._share()
            return
        self._cut()
        for i in self._share():
            self._taken += 1
            yield i
        self.epoch, self._start, self._taken = self.epoch + 1, 0, 0

    def batches(self, loader: Iterable[Any]) -> Iterator[Any]:
        """`loader`'s batches, epoch after epoch, each counted as consumed when the loop takes it.

        `loader` is a DataLoader over this sampler with a batch_size; the position is then
        exact with any num_workers, whatever the workers prefetched when the checkpoint was taken.
        """
        batch_size = getattr(loader, "batch_size", None)
        if not batch_size:
            raise ValueError("ResumableSampler.batches needs a DataLoader(batch_size=..., sampler=this sampler)")
        self._loop_counts = True
        while True:
            self._cut()
            share = len(self)
            set_epoch = getattr(getattr(loader, "dataset", None), "set_epoch", None)
            if set_epoch is not None:
                set_epoch(self.epoch)
            took = False
            for batch in loader:
                # Counted before the loop gets it: a checkpoint after this step includes it.
                self._taken = min(share, self._taken + batch_size)
                took = True
                yield batch
            if not took and self._start == 0:
                raise ValueError(f"the loader yields no batch from a whole epoch of {self.n} samples "
                                 f"({self.world_size} ranks, batch size {batch_size})")
            self.epoch, self._start, self._taken = self.epoch + 1, 0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.seed, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))
        if "consumed" in state:
            consumed = int(state["consumed"])
        else:  # saved before positions were global: a per-rank offset into order[rank::world_size]
            consumed = int(state["offset"]) * self.world_size
        self._start, self._taken = min(consumed, self.n), 0
