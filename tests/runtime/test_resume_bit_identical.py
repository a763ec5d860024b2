"""Preemption and worker loss under `python -m trainer run` with 2 gloo ranks: resume is exact."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers import EXAMPLE, assert_no_workers, read_json, run, start, wait_for, worker_pids, worker_rank
from trainer import contract

pytestmark = pytest.mark.runtime

STEPS = 120
TRAIN_ARGS = ["--steps", str(STEPS), "--samples", "2048", "--hidden", "64"]


def trainer_args(ckpt: str, result: str, *extra: str) -> list[str]:
    return ["--nproc-per-node", "2", "--checkpoint", ckpt, "--run-id", "exp", "--checkpoint-every-steps", "20",
            *extra, EXAMPLE, *TRAIN_ARGS, "--result", result]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("baseline")
    r = run(trainer_args(str(d / "ckpt"), str(d / "result.json")))
    assert r.returncode == 0, r.stdout + r.stderr
    return read_json(str(d / "result.json"))


def test_sigterm_at_a_random_step_commits_exits_143_and_resumes_bit_identical(tmp_path, uninterrupted, rng):
    ckpt, result = str(tmp_path / "ckpt"), str(tmp_path / "result.json")
    proc = start(trainer_args(ckpt, result) + ["--step-sleep", "0.03"], log_path=str(tmp_path / "log"))
    wait_for(lambda: os.path.exists(os.path.join(ckpt, "exp", "latest")), 120, "the first checkpoint")
    time.sleep(rng.uniform(0, 1.5))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143, open(tmp_path / "log").read()
    log = open(tmp_path / "log").read()
    stopped_at = int(open(os.path.join(ckpt, "exp", "latest")).read())
    assert f"checkpoint step {stopped_at} committed" in log
    assert 0 < stopped_at < STEPS
    assert_no_workers(result)

    r = run(trainer_args(ckpt, result))
    assert r.returncode == 0, r.stdout + r.stderr
    resumed = read_json(result)
    assert resumed["resumed_from"] == stopped_at
    assert resumed["sha256"] == uninterrupted["sha256"]


def test_sigkill_of_one_worker_exits_137_and_resumes_from_the_last_periodic_checkpoint(tmp_path, uninterrupted, rng):
    ckpt, result = str(tmp_path / "ckpt"), str(tmp_path / "result.json")
    proc = start(trainer_args(ckpt, result) + ["--step-sleep", "0.03"], log_path=str(tmp_path / "log"))
    wait_for(lambda: os.path.exists(os.path.join(ckpt, "exp", "latest")), 120, "the first checkpoint")
    time.sleep(rng.uniform(0, 1.5))
    victim = next(p for p in worker_pids(result) if worker_rank(p) == 1)
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(60) == 137, open(tmp_path / "log").read()
    assert "rank 1 was killed by SIGKILL" in open(tmp_path / "log").read()
    assert_no_workers(result)
    committed = int(open(os.path.join(ckpt, "exp", "latest")).read())
    assert committed % 20 == 0

    r = run(trainer_args(ckpt, result))
    assert r.returncode == 0, r.stdout + r.stderr
    resumed = read_json(result)
    assert resumed["resumed_from"] == committed
    assert resumed["sha256"] == uninterrupted["sha256"]


def test_sigint_twice_kills_without_waiting_for_a_checkpoint(tmp_path):
    ckpt, result, faults = str(tmp_path / "ckpt"), str(tmp_path / "result.json"), tmp_path / "faults"
    faults.mkdir()
    log_path = tmp_path / "log"
    proc = start(trainer_args(ckpt, result) + ["--step-sleep", "0.03"], log_path=str(log_path),
                 env={contract.ENV_FAULTS_DIR: str(faults)})
    wait_for(lambda: os.path.exists(os.path.join(ckpt, "exp", "latest")), 120, "the first checkpoint")
    first = int(open(os.path.join(ckpt, "exp", "latest")).read())
    # From now on a commit waits 60 s before its manifest, so the stop checkpoint the first Ctrl-C
    # asks for cannot commit before the second one lands (a commit takes ~0.03 s otherwise).
    (faults / contract.FAULT_SLOW_COMMIT).write_text("60")
    proc.send_signal(signal.SIGINT)
    # Two signals sent back to back are one pending signal to the kernel: send the second only
    # once the supervisor has acted on the first.
    wait_for(lambda: "asking the ranks to checkpoint and stop" in log_path.read_text(), 60, "the first SIGINT")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) >= 128
    assert_no_workers(result)
    log = log_path.read_text()
    assert "second interrupt: killing the workers without a checkpoint" in log, log
    assert "preempted: checkpoint step" not in log, log  # contract.LOG_PREEMPTED: no stop checkpoint
    assert int(open(os.path.join(ckpt, "exp", "latest")).read()) >= first  # only periodic commits, if any


def test_a_corrupt_shard_of_one_rank_makes_every_rank_fall_back_to_the_same_step(tmp_path, uninterrupted):
    ckpt, result = str(tmp_path / "ckpt"), str(tmp_path / "result.json")
    r = run(trainer_args(ckpt, result, "--keep", "2"))
    assert r.returncode == 0, r.stdout + r.stderr
    shard = os.path.join(ckpt, "exp", f"step-{STEPS:09d}", "rank-00001.pt")
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(shard, "wb").write(bytes(data))

    r = run(trainer_args(ckpt, result, "--keep", "2"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "rank-00001.pt fails its sha256 check" in out
    assert f"falling back to step-{STEPS - 20:09d}" in out
    resumed = read_json(result)
    assert resumed["resumed_from"] == STEPS - 20  # both ranks, or the collective in restore would have hung
    assert resumed["sha256"] == uninterrupted["sha256"]
