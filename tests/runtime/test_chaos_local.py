"""`launch chaos --local` on real runs: it passes a resumable script and catches ones that are not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kubetrain_chaos import oracle
from tests.helpers import EXAMPLE, FIXTURES, REPO

pytestmark = pytest.mark.runtime

SMALL = ("--steps", "200", "--samples", "2048", "--hidden", "64", "--step-sleep", "0.02")


def test_the_example_survives_every_kind_of_fault_bit_identically(kubetrain_chaos, rng):
    # The pytest plugin users put in their CI: three lines.
    report = kubetrain_chaos(EXAMPLE, *SMALL, nproc=2, faults=5, seed=rng.randrange(1 << 31))
    assert report.ok, report.summary()
    assert {r.kind for r in report.records} == {"sigterm", "kill-worker", "kill-during-upload",
                                                "corrupt-checkpoint", "storage-outage"}
    done = [r for r in report.records if r.exit_code]
    assert len(done) >= 3, report.summary()  # faults that ended a run, each then resumed
    assert all(r.resumed_from == oracle.expected_resume(r) for r in done)
    corrupt = next(r for r in report.records if r.kind == "corrupt-checkpoint")
    if corrupt.exit_code:  # resumed from the step before the one damaged on disk
        assert corrupt.resumed_from < corrupt.stop_step, report.summary()


@pytest.mark.parametrize("mistake,kinds", [
    ("optimizer", "sigterm,kill-worker"),
    ("data", "sigterm,kill-worker"),
    ("rng", "sigterm,kill-worker"),
    ("rank0", "sigterm,kill-worker"),
])
def test_a_script_that_does_not_resume_is_caught_with_the_fault_named(tmp_path, mistake, kinds, rng):
    cmd = [sys.executable, "-m", "launcher.cli", "chaos", os.path.join(FIXTURES, "not_resumable.py"), "--local",
           "--faults", "1", "--kinds", kinds, "--seed", str(rng.randrange(1 << 31)), "--workdir", str(tmp_path),
           "--", "--mistake", mistake]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stdout + out.stderr
    fail = [line for line in out.stdout.splitlines() if line.split()[:1] == ["FAIL"]]
    assert len(fail) == 1 and "identical state" in fail[0], out.stdout
    assert "differs from the uninterrupted run after fault" in fail[0], out.stdout
    assert "reproduce: launch chaos" in out.stdout


def test_the_control_script_passes(tmp_path, rng):
    cmd = [sys.executable, "-m", "launcher.cli", "chaos", os.path.join(FIXTURES, "not_resumable.py"), "--local",
           "--faults", "2", "--kinds", "sigterm,kill-worker", "--seed", str(rng.randrange(1 << 31)),
           "--workdir", str(tmp_path), "-o", "json", "--", "--mistake", "none"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    import json

    doc = json.loads(out.stdout)
    assert doc["ok"] and {c["name"] for c in doc["checks"]} >= {"identical state", "valid resume"}
