import itertools

import pytest
import torch

from trainer.data import ResumableSampler, sample_seed
from trainer.checkpoint.resize import new_rank_seed, resize_note

pytestmark = pytest.mark.runtime


def stream(sampler, n):
    """The first n indices over as many epochs as it takes, as a training loop draws them."""
    return list(itertools.islice((i for _ in itertools.count() for i in sampler), n))


@pytest.mark.parametrize("world,rank", [(1, 0), (2, 0), (2, 1), (3, 2)])
@pytest.mark.parametrize("cut", [0, 1, 7, 8, 16, 17, 23])  # 8 indices per rank and epoch: cuts at the boundaries too
def test_resuming_at_any_position_continues_the_same_stream(world, rank, cut):
    n = 8 * world
    full = stream(ResumableSampler(n, seed=3, rank=rank, world_size=world), 40)
    first = ResumableSampler(n, seed=3, rank=rank, world_size=world)
    head = stream(first, cut)
    resumed = ResumableSampler(n, seed=3, rank=rank, world_size=world)
    resumed.load_state_dict(first.state_dict())
    assert head + stream(resumed, 40 - cut) == full


def test_ranks_see_disjoint_samples_and_epochs_reshuffle():
    a, b = ResumableSampler(10, seed=1, rank=0, world_size=2), ResumableSampler(10, seed=1, rank=1, world_size=2)
    ea, eb = list(a), list(b)
    assert sorted(ea + eb) == list(range(10))
    assert list(a) != ea


def take(samplers, steps, batch):
    """`steps` lockstep steps of `batch` samples per rank, as data-parallel ranks consume them."""
    its = [iter(s) for s in samplers]
    return [[next(it) for _ in range(batch)] for _ in range(steps) for it in its]


@pytest.mark.parametrize("before,after,steps", [(2, 1, 3), (2, 3, 3), (4, 2, 2), (3, 2, 2), (1, 4, 4)],
                         ids=lambda v: str(v))
def test_a_resume_with_other_ranks_sees_every_sample_of_the_epoch_once(before, after, steps):
    n, batch = 96, 4  # rest of the epoch divisible by after x batch for these cuts
    old = [ResumableSampler(n, seed=5, rank=r, world_size=before) for r in range(before)]
    head = take(old, steps, batch)
    state = old[0].state_dict()  # the replicated copy (extra=): rank 0's
    assert state["consumed"] == steps * before * batch
    assert all(s.state_dict() == state for s in old)  # the position does not depend on the rank
    new = [ResumableSampler(n, seed=0, rank=r, world_size=after) for r in range(after)]
    for s in new:
        s.load_state_dict(state)
    rest = (n - state["consumed"]) // (after * batch)
    tail = take(new, rest, batch)
    seen = sorted(i for b in head + tail for i in b)
    assert seen == list(range(n))
    assert all(s.state_dict() == {"epoch": 0, "seed": 5, "consumed": n} for s in new)
    epoch1 = [ResumableSampler(n, rank=r, world_size=after) for r in range(after)]
    for s in epoch1:
        s.load_state_dict({"epoch": 1, "seed": 5, "consumed": 0})
    assert [next(iter(s)) for s in new] == [next(iter(s)) for s in epoch1]  # then the next epoch


def test_uneven_shares_still_see_every_sample_once():
    n = 11
    old = [ResumableSampler(n, seed=1, rank=r, world_size=2) for r in range(2)]
    head = take(old, 2, 1)
    new = [ResumableSampler(n, rank=r, world_size=3) for r in range(3)]
    for s in new:
        s.load_state_dict(old[0].state_dict())
    tail = [i for s in new for i in list(s)]
    assert sorted([i for b in head for i in b] + tail) == list(range(n))


def test_a_checkpoint_from_before_global_positions_still_loads():
    s = ResumableSampler(20, seed=2, rank=1, world_size=2)
    ref = ResumableSampler(20, seed=2, rank=1, world_size=2)
    head = stream(ref, 3)
    s.load_state_dict({"epoch": 0, "offset": 3, "seed": 2})
    assert head + stream(s, 7) == list(ResumableSampler(20, seed=2, rank=1, world_size=2))


class Indexed(torch.utils.data.Dataset):
    """Sample i is i plus noise seeded from the sample: what an augmentation in a worker must do."""

    def __init__(self, n):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(sample_seed(0, self.epoch, i))
        return torch.tensor(i), torch.rand((), generator=g)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cut", [1, 5, 8, 9])  # 8 batches per epoch: cuts at and past the boundary
def test_batches_counts_what_the_loop_took_not_what_workers_prefetched(workers, cut):
    def loader_of(sampler, data):
        return torch.utils.data.DataLoader(data, batch_size=4, sampler=sampler, num_workers=workers, drop_last=True)

    data = Indexed(64)
    ref = ResumableSampler(64, seed=3, rank=1, world_size=2)
    full = list(itertools.islice(ref.batches(loader_of(ref, data)), 20))
    first = ResumableSampler(64, seed=3, rank=1, world_size=2)
    head = list(itertools.islice(first.batches(loader_of(first, data)), cut))
    state = first.state_dict()  # with workers, they have prefetched well past `cut` by now
    # Right after an epoch's last batch the epoch is complete, not yet the next one.
    assert (state["epoch"], state["consumed"]) == ((0, 64) if cut == 8 else (cut // 8, cut * 8 % 64))
    resumed = ResumableSampler(64, seed=0, rank=1, world_size=2)
    resumed.load_state_dict(state)
    tail = list(itertools.islice(resumed.batches(loader_of(resumed, Indexed(64))), 20 - cut))
    for (i, x), (j, y) in zip(full, head + tail):
        assert torch.equal(i, j) and torch.equal(x, y)


def test_resize_note_says_what_is_exact_and_what_is_not():
    s = ResumableSampler(8, rank=0, world_size=1)
    grow = resize_note(250, 2, 3, extra={"sampler": s}, per_rank={"ema": object()})
    assert grow.startswith("step-000000250 was saved by 2 ranks, this run has 3; ")
    assert "data position ('sampler') re-partitioned exactly" in grow
    assert "RNG of ranks 0-1 restored, of rank 2 seeded by new_rank_seed(initial seed, rank, step)" in grow
    assert "NOT EXACT: per-rank state 'ema'" in grow and "\n" not in grow
    shrink = resize_note(250, 4, 2, extra={}, per_rank={"sampler": s})
    assert "re-partitioned exactly" in shrink and "NOT EXACT" not in shrink and "new_rank_seed" not in shrink
    assert "NOT EXACT: per-rank state 'sampler'" in resize_note(250, 2, 3, extra={}, per_rank={"sampler": s})


def test_a_new_rank_seed_is_derived_not_fresh():
    assert new_rank_seed(7, 2, 250) == new_rank_seed(7, 2, 250)
    assert len({new_rank_seed(7, r, 250) for r in range(8)} | {new_rank_seed(7, 2, 251)}) == 9
