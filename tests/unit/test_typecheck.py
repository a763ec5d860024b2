"""mypy holds the seams: the pod contract, both backends to their Protocol, a job's status ([tool.mypy])."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("mypy")


def test_the_seams_type_check():
    # No cache: a clean run each time (a few seconds), and nothing written into the checkout.
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
