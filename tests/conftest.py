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
#: xdist worker, so it is started once, and they run beside each other from the first minute.
_WHOLE_TIERS = ("cluster", "node", "kind")


def xdist_group_of(nodeid: str) -> str:
    """The unit of work one pytest-xdist worker takes (scripts/test runs two): a tier that starts a
    control plane, else the test's module, so a module-scoped fixture (a reference run, an S3 server
    per parameter) is set up once rather than once per worker."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "tests" and parts[1] in _WHOLE_TIERS:
        # The kind and the node tier one after the other on one worker: each holds the 6 GB runtime
        # image unpacked in a containerd of its own (about 12 GB), and both at once fill a CI disk.
        return "node" if parts[1] == "kind" else parts[1]
    return path


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # without pytest-xdist the tests run in one process, and this hook is unknown
    pass
else:
    class _TierScheduling(LoadScopeScheduling):
        """xdist's loadscope with our units (xdist_group_of). Not `--dist loadgroup` and xdist_group
        marks: xdist 3.8.0 groups by a suffix it writes to item._nodeid, which pytest 9.2 no longer
        reads (node ids live in item._id), so every test was scheduled alone: the node tier started
        twice on one containerd socket and the cluster tier twice."""

        def _split_scope(self, nodeid: str) -> str:
            return xdist_group_of(nodeid)

    def pytest_xdist_make_scheduler(config, log):
        return _TierScheduling(config, log)
