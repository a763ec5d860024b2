"""A resume with a different number of ranks: what comes back exactly, and what cannot.

Spot capacity that shrinks, or an elastic `--nodes MIN:MAX` job, restarts a run
with another number of ranks. Replicated state (model, optimizer, scheduler,
`extra=`) loads on every rank as before. A `ResumableSampler` keeps a global
position, so wherever its state reaches a rank it re-partitions the rest of the
epoch exactly (trainer/data.py). Per-rank state cannot be re-partitioned: a rank
that existed at save time restores its own (its RNG streams, its `per_rank=`
objects); a rank that did not exist has none, and its RNG streams start from
`new_rank_seed`, never from whatever the process happened to hold. Rank 0 says
all of this in one log line, and says "not exact" where it is not.
"""

from __future__ import annotations

import hashlib
import logging
import random
import sys
from typing import Any, Mapping

import torch

from trainer import contract

log = logging.getLogger("kubetrain.checkpoint")


def new_rank_seed(base: int, rank: int, step: int) -> int:
    """The seed of a rank that did not exist when `step` was saved.

    `base` is torch.initial_seed() when restore() runs: the seed the script set before
    it (torch.manual_seed(seed) or seed + rank). Derived, so a rerun draws the same.
    """
    digest = hashlib.sha256(f"kubetrain-rank/{base}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_new_rank(rank: int, step: int) -> int:
    """Seed every RNG stream of this process (python, torch with CUDA, numpy if loaded) by new_rank_seed."""
    seed = new_rank_seed(torch.initial_seed(), rank, step)
    random.seed(seed)
    torch.manual_seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % (1 << 32))
    return seed


def _ranks(lo: int, hi: int) -> str:
    return f"rank {lo}" if hi == lo + 1 else f"ranks {lo}-{hi - 1}"


def resize_note(step: int, saved: int, now: int, extra: Mapping[str, Any], per_rank: Mapping[str, Any]) -> str:
    """The one line rank 0 logs when `step` was saved by `saved` ranks and this run has `now`."""
    from trainer.data import ResumableSampler

    kept = min(saved, now)
    parts = [f"{contract.step_dir_name(step)} was saved by {saved} ranks, this run has {now}"]
    exact = [k for k, v in extra.items() if isinstance(v, ResumableSampler)]
    if saved > now:
        # Every rank of this run has its own saved state; a ResumableSampler's is the global position.
        exact += [k for k, v in per_rank.items() if isinstance(v, ResumableSampler)]
    if exact:
        parts.append(f"data position ({', '.join(repr(k) for k in exact)}) re-partitioned exactly")
    rng = f"RNG of {_ranks(0, kept)} restored"
    if now > saved:
        rng += f", of {_ranks(saved, now)} seeded by new_rank_seed(initial seed, rank, step)"
    parts.append(rng)
    inexact = [k for k, v in per_rank.items() if k not in exact]
    if inexact:
        whose = f"restored on {_ranks(0, kept)}" + (f", fresh on {_ranks(saved, now)}" if now > saved else "")
        parts.append(f"NOT EXACT: per-rank state {', '.join(repr(k) for k in inexact)} was saved for {saved} ranks "
                     f"and cannot be re-partitioned ({whose}; a ResumableSampler in extra= can)")
    return "; ".join(parts)


def after_restore(rank: int, world_size: int, saved: int, step: int, *, restored_rng: bool,
                  extra: Mapping[str, Any], per_rank: Mapping[str, Any]) -> None:
    """Called by restore() on every rank when the checkpoint's world size differs from this run's."""
    if not restored_rng:
        seed_new_rank(rank, step)
    if rank == 0:
        log.warning("%s", resize_note(step, saved, world_size, extra, per_rank))
