"""Sharded (FSDP2/DTensor) state goes through torch.distributed.checkpoint, chosen by the state itself."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.helpers import FIXTURES, assert_no_workers, read_json, run, start, wait_for

pytestmark = pytest.mark.runtime
SCRIPT = os.path.join(FIXTURES, "train_fsdp.py")


def args(ckpt, result, *extra):
    return ["--nproc-per-node", "2", "--checkpoint", ckpt, "--run-id", "fsdp", *extra, SCRIPT, "--result", result]


def test_fsdp2_state_is_saved_sharded_and_resumes_bit_identical_after_sigterm(tmp_path, rng):
    base = str(tmp_path / "base.json")
    r = run(args(str(tmp_path / "ck-base"), base))
    assert r.returncode == 0, r.stdout + r.stderr

    ckpt, result = str(tmp_path / "ck"), str(tmp_path / "r.json")
    proc = start(args(ckpt, result) + ["--step-sleep", "0.05"], log_path=str(tmp_path / "log"))
    wait_for(lambda: os.path.exists(os.path.join(ckpt, "fsdp", "latest")), 120, "the first checkpoint")
    time.sleep(rng.uniform(0, 1.0))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143, open(tmp_path / "log").read()
    assert_no_workers(result)
    step = int(open(os.path.join(ckpt, "fsdp", "latest")).read())
    manifest = json.load(open(os.path.join(ckpt, "fsdp", f"step-{step:09d}", "manifest.json")))
    assert manifest["kind"] == "sharded"
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp"} <= set(manifest["files"])

    r = run(args(ckpt, result))
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_json(result)["resumed_from"] == step
    assert read_json(result)["sha256"] == read_json(base)["sha256"]
