"""M7 in detail: what one `Checkpointer.step_end()` costs, agreeing every step vs every few.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m bench.step_end [--rounds 4] [--steps 300]

The bench's M7 workload, timed inside the process: both variants alternate in
one run, so the machine's swings hit both alike. Rank 0 prints one line per
variant: `STEP_END <max steps between agreements> <mean ms per call> <mean ms per step>`.
Run by M7 (bench/runtime.py); `-m` from the repository root puts it on sys.path.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.distributed as dist

from bench.workload import build_model
from trainer.checkpoint import Checkpointer, agreement


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=4, help="times each variant runs, alternating")
    p.add_argument("--steps", type=int, default=300, help="steps per variant per round")
    args = p.parse_args()
    dist.init_process_group("gloo")
    model = build_model(16)
    x = torch.randn(64, 1024)
    with tempfile.TemporaryDirectory() as d:
        ckpt = Checkpointer(model, uri=d, run_id="step-end", every_steps=0)
        ckpt.restore()
        calls: dict[int, list[float]] = {1: [], agreement.AGREE_MAX_STEPS: []}
        steps: dict[int, list[float]] = {k: [] for k in calls}
        n = 0
        for _ in range(args.rounds):
            for k in calls:
                agreement.AGREE_MAX_STEPS = k  # every rank switches at the same call
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        model(x)
                        for p in model.parameters():
                            p.mul_(0.9999)
                    t = torch.ones(1)
                    dist.all_reduce(t)
                    t1 = time.perf_counter()
                    n += 1
                    ckpt.step_end(n)
                    t2 = time.perf_counter()
                    calls[k].append(t2 - t1)
                    steps[k].append(t2 - t0)
        ckpt.close()
    if dist.get_rank() == 0:
        for k in calls:
            print(f"STEP_END {k} {statistics.mean(calls[k]) * 1e3:.4f} {statistics.mean(steps[k]) * 1e3:.4f}",
                  flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
