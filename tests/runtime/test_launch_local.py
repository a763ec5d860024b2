"""`launch train.py --local --nproc 2`: the embedded default trains, and resumes after Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import EXAMPLE, REPO, assert_no_workers, read_json, wait_for

pytestmark = pytest.mark.runtime
ARGS = ["--steps", "120", "--samples", "2048", "--hidden", "64"]


def launch(tmp_path, *script_extra: str, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "launcher.cli", EXAMPLE, "--local", "--nproc", "2", "--checkpoint-every-steps", "20",
           "--", *ARGS, *script_extra, "--result", str(tmp_path / "r.json")]
    return subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_ctrl_c_checkpoints_and_the_same_command_resumes_bit_identical(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    p = launch(base)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    assert os.path.isdir(base / "checkpoints" / "train")  # ./checkpoints/<script name> by default

    # A terminal's Ctrl-C reaches the whole foreground process group: launcher and runtime alike.
    p = launch(tmp_path, "--step-sleep", "0.03", start_new_session=True)
    wait_for(lambda: os.path.exists(tmp_path / "checkpoints" / "train" / "latest"), 120, "the first checkpoint")
    os.killpg(p.pid, signal.SIGINT)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 143, out
    stopped = int(open(tmp_path / "checkpoints" / "train" / "latest").read())
    assert_no_workers(str(tmp_path / "r.json"))

    p = launch(tmp_path)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    assert read_json(str(tmp_path / "r.json"))["resumed_from"] == stopped
    assert read_json(str(tmp_path / "r.json"))["sha256"] == read_json(str(base / "r.json"))["sha256"]
