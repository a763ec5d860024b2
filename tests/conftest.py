import os
import random

import pytest


@pytest.fixture
def rng(request) -> random.Random:
    """A seeded RNG for fault timing; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("KUBETRAIN_TEST_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"KUBETRAIN_TEST_SEED={seed} ({request.node.name})")
    return random.Random(seed)
