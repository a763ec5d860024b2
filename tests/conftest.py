import os
import random

import pytest


@pytest.fixture
def rng(request) -> random.Random:
    """A seeded RNG for fault timing; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("KUBETRAIN_TEST_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"KUBETRAIN_TEST_SEED={seed} ({request.node.name})")
    return random.Random(seed)


#: Tiers that start a control plane of their own (package-scoped fixtures): each runs whole on one
#: xdist worker, so it is started once, and the two run beside each other from the first minute.
_WHOLE_TIERS = ("cluster", "node")


def xdist_group_of(nodeid: str) -> str:
    """The unit of work one pytest-xdist worker takes (scripts/test runs `--dist loadgroup`): a tier
    that starts a control plane, else the test's module, so a module-scoped fixture (a reference run,
    an S3 server per parameter) is set up once rather than once per worker."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "tests" and parts[1] in _WHOLE_TIERS:
        return parts[1]
    return path


def pytest_itemcollected(item):
    # As each test is collected: xdist's pytest_collection_modifyitems, which turns the marks into the
    # node ids its scheduler groups by, runs before a conftest's (tryfirst or not), so marks added there
    # came too late and every test was scheduled on its own.
    item.add_marker(pytest.mark.xdist_group(xdist_group_of(item.nodeid)))
