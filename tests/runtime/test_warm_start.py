"""Warm start under `python -m trainer run` with 2 gloo ranks: a scheduled run starts from the previous run's weights."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import run
from trainer import contract

pytestmark = pytest.mark.runtime

# A tiny DDP training script: its result says what restore() gave it and what it ended with.
SCRIPT = '''
import hashlib, json, os, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from trainer import Checkpointer

steps, out = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo")
torch.manual_seed(0)  # the same initial weights on every rank and in every run
model = torch.nn.Linear(8, 4)
ddp = DDP(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)

def sha():
    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        h.update(k.encode()); h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

initial = sha()
ckpt = Checkpointer(model, opt)
start = ckpt.restore()
restored, momentum_buffers = sha(), len(opt.state)
g = torch.Generator().manual_seed(1 + dist.get_rank())
for step in range(start, steps):
    x = torch.randn(16, 8, generator=g)
    loss = ddp(x).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    ckpt.step_end(step + 1)
ckpt.close(final_step=steps)
if dist.get_rank() == 0:
    json.dump({"start": start, "initial": initial, "restored": restored, "final": sha(),
               "momentum_buffers": momentum_buffers}, open(out, "w"))
dist.destroy_process_group()
'''


@pytest.fixture
def script(tmp_path) -> str:
    path = tmp_path / "retrain.py"
    path.write_text(SCRIPT)
    return str(path)


def train(script: str, ckpt: str, run_id: str, result: str, *, steps: int = 6, env: dict | None = None,
          extra: tuple[str, ...] = ()) -> tuple[dict, str]:
    r = run(["--nproc-per-node", "2", "--checkpoint", ckpt, "--run-id", run_id, "--checkpoint-every-steps", "0",
             *extra, script, str(steps), result], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(result) as f:
        return json.load(f), r.stdout + r.stderr


def test_a_scheduled_run_starts_from_the_previous_runs_final_weights_and_says_so(tmp_path, script):
    ckpt = str(tmp_path / "ckpt")
    # The pod gets the setting as the launcher renders it: an environment variable.
    env = {contract.ENV_WARM_START_FROM: contract.WARM_START_LATEST}
    first, log = train(script, ckpt, "nightly-29000000", str(tmp_path / "1.json"), env=env)
    assert first["restored"] == first["initial"] and first["final"] != first["initial"]
    assert "warm start: no earlier run of this schedule" in log  # the first run of a schedule starts fresh

    # Another schedule's newer run in the same root is not "the previous run of this schedule".
    train(script, ckpt, "other-29000500", str(tmp_path / "o.json"), steps=3)

    second, log = train(script, ckpt, "nightly-29001440", str(tmp_path / "2.json"), env=env)
    assert second["start"] == 0
    assert second["restored"] == first["final"]
    assert second["momentum_buffers"] == 0  # weights only: a fresh optimizer
    assert contract.LOG_WARM_START.format(uri=os.path.join(ckpt, "nightly-29000000"), step=6) in log
    assert second["final"] != first["final"]

    # The same run restarted (a preempted pod) resumes its own checkpoint, not the warm start.
    again, log = train(script, ckpt, "nightly-29001440", str(tmp_path / "3.json"), env=env, steps=8)
    assert again["start"] == 6 and again["restored"] == second["final"]
    assert "warm start from" not in log


def test_warm_start_optimizer_restores_the_momentum_and_a_named_run_folder_works(tmp_path, script):
    ckpt = str(tmp_path / "ckpt")
    first, _ = train(script, ckpt, "exp-a", str(tmp_path / "1.json"))
    second, log = train(script, ckpt, "exp-b", str(tmp_path / "2.json"),
                        extra=("--warm-start-from", os.path.join(ckpt, "exp-a"), "--warm-start-optimizer"))
    assert second["start"] == 0 and second["restored"] == first["final"]
    assert second["momentum_buffers"] > 0
    assert "weights and optimizer" in log


def test_warm_start_latest_needs_a_scheduled_run_id():
    r = run(["--run-id", "exp", "--warm-start-from", "latest", "examples/train.py"])
    assert r.returncode == 2 and "needs the run id of a scheduled run" in r.stderr
