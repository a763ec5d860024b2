import itertools

import pytest

from trainer.data import ResumableSampler

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
