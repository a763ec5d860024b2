"""M9: peak RSS of this process during a save to S3 minus its RSS before, vs the state's size."""

from __future__ import annotations

import threading
import time

from bench.context import Context
from bench.timing import MiB
from bench.workload import build_model
from trainer.checkpoint import Checkpointer


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def run(ctx: Context) -> dict:
    ckpt = Checkpointer(build_model(ctx.mib), uri=f"s3://{ctx.bucket}/m9", run_id="r", keep=1)
    out = {}
    for label, step in (("first_save", 1), ("steady_save", 2)):
        before = rss()
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.001)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            ckpt.save(step, blocking=True)
        finally:
            done.set()
            t.join()
        out[f"{label}_MiB"] = (peak[0] - before) / MiB
    ckpt.close()
    out["state_MiB"] = ctx.mib
    out["target_MiB"] = ctx.mib + 256
    return out
