"""Which metrics `python -m bench NAME ...` runs, and in what order."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import metrics
from tests.helpers import REPO


@pytest.mark.parametrize("names, ids", [
    ([], ["M1", "M3", "M4", "M2", "M5", "M9", "M6", "M7", "M8"]),
    (["M4"], ["M3", "M4"]),  # M4 sizes its budget from M3's boto3 rate, measured first in the same run
    (["overhead", "m1"], ["M1", "M3", "M2"]),
    (["gpu-stall"], ["gpu-stall"]),
    (["launcher_start"], ["M8"]),
], ids=["default", "needs", "by-name-any-case", "only-when-named", "module-name"])
def test_the_plan_runs_what_was_named_and_what_it_needs(names, ids):
    assert [m.id for m in metrics.plan(names)] == ids


def test_an_unknown_metric_is_refused_with_the_names():
    r = subprocess.run([sys.executable, "-m", "bench", "M10"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no metric 'M10'" in r.stderr and "M8 (launcher_start)" in r.stderr, r.stderr
