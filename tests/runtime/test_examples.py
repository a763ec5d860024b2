"""The examples in examples/: each runs with `launch <script> --local`, says its device first, and passes chaos.

Small sizes: on two CPU cores a `--local` run takes 6-12 s and a chaos check 50-80 s
(most of it starting processes); the same scripts run at full size on GPUs (see each one's docstring). The chaos seeds are fixed: the
fault steps are the same on every run of this test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.runtime
EXAMPLES = os.path.join(REPO, "examples")
IMAGE = os.path.join(EXAMPLES, "image_classifier.py")
FSDP = os.path.join(EXAMPLES, "transformer_fsdp.py")
IMAGE_SMALL = ("--batch-size", "4", "--fake-samples", "256", "--image-size", "16", "--workers", "2")
FSDP_SMALL = ("--dim", "32", "--layers", "2", "--heads", "2", "--seq-len", "16", "--sequences", "512")
TRAIN_SMALL = ("--samples", "2048", "--hidden", "64")

pytest.importorskip("torchvision", reason="the examples extra: pip install 'kubetrain[examples]' (scripts/setup)")


@pytest.mark.parametrize("script,small", [(IMAGE, IMAGE_SMALL), (FSDP, FSDP_SMALL),
                                          (os.path.join(EXAMPLES, "train.py"), TRAIN_SMALL)],
                         ids=["image_classifier", "transformer_fsdp", "train"])
def test_each_example_runs_with_launch_local_and_says_its_device_first(tmp_path, script, small):
    cmd = [sys.executable, "-m", "launcher.cli", script, "--local", "--nproc", "2", "--", *small, "--steps", "20"]
    out = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    own = [line for line in out.stdout.splitlines() if not line.startswith("[kubetrain")]
    # Each rank's first line (in either order); on this machine both ranks run on the CPU over gloo.
    assert sorted(own[:2]) == ["rank 0/2: device cpu, backend gloo", "rank 1/2: device cpu, backend gloo"], out.stdout
    assert own[-1].startswith("done: 20 steps"), out.stdout


@pytest.mark.parametrize("script,small,kinds", [
    # With DataLoader workers: kill-worker must hit the rank, and a killed loader worker is retried (137).
    (IMAGE, IMAGE_SMALL, ("sigterm", "kill-worker", "kill-loader-worker", "corrupt-checkpoint")),
    (FSDP, FSDP_SMALL, ("sigterm", "kill-worker", "corrupt-checkpoint")),
], ids=["image_classifier", "transformer_fsdp"])
def test_each_example_survives_launch_chaos_bit_identically(kubetrain_chaos, script, small, kinds):
    report = kubetrain_chaos(script, *small, "--steps", "80", "--step-sleep", "0.02", nproc=2, faults=len(kinds),
                             seed=16, kinds=kinds)
    assert report.ok, report.summary()
    # The plan draws every kind once before any repeats (kubetrain_chaos/plan.py).
    assert {r.kind for r in report.records if r.number is not None} == set(kinds)
