"""`launch chaos --local` on real runs: it passes a resumable script and catches ones that are not."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

from kubetrain_chaos import ChaosPlan, oracle, run_chaos
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


# The shortest and the longest window the issue names: each period 2..8 is shown for every seed 1..20 by the
# plan alone (tests/unit/test_chaos_plan.py); a real run each costs about 1.5 minutes of CI, so two here.
@pytest.mark.parametrize("window", [2, 5])
def test_a_script_wrong_only_inside_an_accumulation_window_is_caught_whatever_the_seed(tmp_path, window, rng):
    # Issue 25: the default plan resumes at two residues of every period 2..8 at least (a pure function of
    # the plan: tests/unit/test_chaos_plan.py), so a window of any length up to 8 is entered by some restart.
    seed = rng.randrange(1 << 31)
    cmd = [sys.executable, "-m", "launcher.cli", "chaos", os.path.join(FIXTURES, "not_resumable.py"), "--local",
           "--seed", str(seed), "--workdir", str(tmp_path), "--", "--mistake", "accumulate", "--window", str(window)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 1, out.stdout + out.stderr
    fail = [line for line in out.stdout.splitlines() if line.split()[:1] == ["FAIL"]]
    assert len(fail) == 1 and "identical state" in fail[0], out.stdout
    covered = next(line for line in out.stdout.splitlines() if "covered" in line.split()[1:2])
    # The report names the period's residues ("2 of 2 residues mod 2, 3 of 3 mod 3, ...": the first says "residues").
    assert re.search(rf" of {window}( residues)? mod {window}\b", covered), out.stdout


def test_the_control_script_passes(tmp_path, rng):
    cmd = [sys.executable, "-m", "launcher.cli", "chaos", os.path.join(FIXTURES, "not_resumable.py"), "--local",
           "--faults", "2", "--kinds", "sigterm,kill-worker", "--seed", str(rng.randrange(1 << 31)),
           "--workdir", str(tmp_path), "-o", "json", "--", "--mistake", "none"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    import json

    doc = json.loads(out.stdout)
    assert doc["ok"] and {c["name"] for c in doc["checks"]} >= {"identical state", "valid resume"}


def test_a_script_that_never_restores_is_named_without_waiting_for_the_run_to_end(tmp_path):
    cmd = [sys.executable, "-m", "launcher.cli", "chaos", os.path.join(FIXTURES, "not_resumable.py"), "--local",
           "--faults", "1", "--kinds", "kill-worker", "--seed", "5", "--workdir", str(tmp_path),
           "--", "--mistake", "norestore"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stdout + out.stderr
    fail = [line for line in out.stdout.splitlines() if line.split()[:1] == ["FAIL"]]
    assert fail and "valid resume" in fail[0] and "the script never restored: no resumed line after fault 1" in \
        fail[0], out.stdout
    assert "no worker found" not in out.stdout and "faults injected 1 of 1" in " ".join(out.stdout.split())


def test_an_off_by_one_step_end_is_flagged_first(tmp_path):
    cmd = [sys.executable, "-m", "launcher.cli", "chaos", os.path.join(FIXTURES, "not_resumable.py"), "--local",
           "--faults", "1", "--kinds", "sigterm", "--seed", "5", "--workdir", str(tmp_path),
           "--", "--mistake", "offbyone"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stdout + out.stderr
    fail = [line for line in out.stdout.splitlines() if line.split()[:1] == ["FAIL"]]
    assert fail and "step numbering" in fail[0] and "step-000000000 was committed" in fail[0], out.stdout
    assert "redid nothing" not in out.stdout


def test_kill_worker_kills_a_rank_and_a_killed_loader_worker_is_retried(tmp_path):
    # A script whose ranks have DataLoader worker processes (num_workers=2): they inherit RANK and
    # the command line, and only the rank's recorded PID tells the rank apart.
    report = run_chaos(ChaosPlan(script=os.path.join(FIXTURES, "loader_workers.py"), script_args=("--steps", "120"),
                                 nproc=2, faults=2, seed=3, kinds=("kill-worker", "kill-loader-worker"),
                                 workdir=str(tmp_path)))
    assert report.ok, report.summary()
    by_kind = {r.kind: r for r in report.records}
    assert set(by_kind) == {"kill-worker", "kill-loader-worker"}, report.summary()
    assert by_kind["kill-worker"].exit_code == by_kind["kill-loader-worker"].exit_code == 137, report.summary()
    logs = "".join(open(p, errors="replace").read() for p in sorted(glob.glob(str(tmp_path / "chaos-*.log"))))
    rank = by_kind["kill-worker"].detail.split()[3]  # "SIGKILL of rank R (pid P)"
    assert f"rank {rank} was killed by SIGKILL" in logs, logs[-3000:]
    # torch words the loader worker's death by which of its checks saw it first (test_loader_worker_death.py).
    assert re.search(r"DataLoader worker \(pid(\(s\))? [\d, ]+\) (is killed by signal: Killed|exited unexpectedly)"
                     r".*an infrastructure fault: exit 137, retried", logs), logs[-3000:]
    assert "user error" not in logs


def test_the_same_seed_gives_the_same_verdict_when_repeated(tmp_path):
    # kill-during-upload is the fault whose moment varies most with the machine's load: the kill may land
    # before a step's manifest, after it, or while `latest` is replaced. The verdict must not care.
    cmd = [sys.executable, "-m", "launcher.cli", "chaos", os.path.join(FIXTURES, "not_resumable.py"), "--local",
           "--faults", "2", "--kinds", "kill-during-upload,sigterm", "--seed", "11", "--repeat", "2",
           "--workdir", str(tmp_path), "--", "--mistake", "none"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 repeats of seed 11: PASS, PASS; the verdicts agree" in out.stdout, out.stdout
    assert out.stdout.count("restart ledger of the faulted run") == 2, out.stdout
