"""M1: how long Checkpointer.save() blocks training, vs torch.save + fsync of the same state to local disk."""

from __future__ import annotations

import os
import statistics

import torch

from bench.context import Context
from bench.timing import median_time, timed
from bench.workload import build_model
from trainer.checkpoint import Checkpointer


def torch_save_fsync(state: dict, path: str) -> None:
    """What a training loop that checkpoints synchronously does."""
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def run(ctx: Context) -> dict:
    model = build_model(ctx.mib)
    ckpt = Checkpointer(model, uri=os.path.join(ctx.tmp, "m1"), run_id="r", keep=1)
    stalls = []
    for i in range(ctx.reps):
        stalls.append(timed(lambda: ckpt.save(i + 1)))
        ckpt.wait()
    ckpt.close()
    base = median_time(lambda: torch_save_fsync(model.state_dict(), os.path.join(ctx.tmp, "m1.pt")), ctx.reps)
    stall = statistics.median(stalls)
    return {"stall_s": stall, "torch_save_fsync_s": base, "ratio": stall / base, "target": 0.05}
