"""M2: training wall time with a checkpoint every K steps vs none, same process, same model.

K makes the interval twice the save-to-commit time: to S3 that time is M3's (from earlier in
the same run), to local disk it is measured here.
"""

from __future__ import annotations

import os

import torch

from bench.context import Context, progress
from bench.timing import median_time, timed
from bench.workload import build_model
from trainer.checkpoint import Checkpointer


def overhead(mib: int, uri: str, commit_s: float, steps: int) -> dict:
    model = build_model(mib)
    x = torch.randn(256, 1024)

    def step() -> None:
        with torch.no_grad():
            model(x)

    step_s = median_time(step, 5)
    k = max(2, int(2 * commit_s / step_s) + 1)  # interval >= 2x the save-to-commit time
    ckpt = Checkpointer(model, uri=uri, run_id="r", keep=1, every_steps=k)
    ckpt.save(0, blocking=True)  # first save allocates the snapshot buffers; steady state is what recurs

    def loop(with_ckpt: bool) -> None:
        for i in range(1, steps + 1):
            step()
            if with_ckpt:
                ckpt.step_end(i)
        if with_ckpt:
            ckpt.wait()

    base, ours = [], []
    for _ in range(2):  # interleaved
        base.append(timed(lambda: loop(False)))
        ours.append(timed(lambda: loop(True)))
    ckpt.close()
    b, o = min(base), min(ours)
    return {"steps": steps, "every_k": k, "step_s": step_s, "no_ckpt_s": b, "ckpt_s": o, "overhead": o / b - 1,
            "target": 0.02}


def local_commit_s(mib: int, uri: str) -> float:
    """Save-to-commit time to local disk, after a first save (which allocates the buffers)."""
    ckpt = Checkpointer(build_model(mib), uri=uri, run_id="r", keep=1)
    ckpt.save(0, blocking=True)
    steps = iter(range(1, 100))
    took = median_time(lambda: ckpt.save(next(steps), blocking=True), 3)
    ckpt.close()
    return took


def run(ctx: Context) -> dict:
    steps = 20 if ctx.quick else 120
    s3 = overhead(ctx.mib, f"s3://{ctx.bucket}/m2", ctx.earlier["M3"]["ours_s"], steps)
    progress("M2: to S3 done; now to local disk")
    local = overhead(ctx.mib, os.path.join(ctx.tmp, "m2"), local_commit_s(ctx.mib, os.path.join(ctx.tmp, "m2s")),
                     steps)
    return {"s3": s3, "local": local}
