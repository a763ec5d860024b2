"""A training loop whose state has a chosen size, for the benchmarks.

    python -m trainer run bench/workload.py --mib 256 --steps 100000 --step-ms 50

Each step is a cheap in-place update of every parameter plus a sleep, so the
step time is set by --step-ms rather than by this machine's CPU. Prints
`READY` once the first step ran (after restore).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from trainer import Checkpointer


def build_model(mib: int) -> torch.nn.Module:
    """Linear layers of 1024x1024 float32 (4 MiB each) adding up to `mib`."""
    layers = max(1, mib // 4)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024, bias=False) for _ in range(layers)])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=64)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--step-ms", type=float, default=50, help="sleep per step (0: compute only)")
    p.add_argument("--compute", type=int, default=0, help="batch rows pushed through the model per step")
    p.add_argument("--print-steps", action="store_true", help="print STEP n after each completed step")
    p.add_argument("--no-checkpointer", action="store_true", help="the baseline: no kubetrain API at all")
    p.add_argument("--print-timing", action="store_true", help="rank 0 prints wall-clock times: T <event> <time>")
    args = p.parse_args()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    model = build_model(args.mib)
    ckpt = None if args.no_checkpointer else Checkpointer(model, total_steps=args.steps)

    def mark(event: str) -> None:  # wall clock: the bench compares it with its own kill and start times
        if args.print_timing and (not dist.is_initialized() or dist.get_rank() == 0):
            print(f"T {event} {time.time():.6f}", flush=True)

    mark("restore_start")
    start = ckpt.restore() if ckpt else 0
    mark("restore_end")
    x = torch.randn(args.compute, 1024) if args.compute else None
    t0 = time.perf_counter()
    for step in range(start, args.steps):
        with torch.no_grad():
            if x is not None:
                model(x)
            for param in model.parameters():
                param.mul_(0.9999)
        if dist.is_initialized():
            t = torch.ones(1)
            dist.all_reduce(t)  # the gradient all-reduce a DDP step would do, in miniature
        if args.step_ms:
            time.sleep(args.step_ms / 1000)
        if step == start:
            mark("first_step")
            if not args.print_timing:  # its marks are the signal; READY would run into them
                print("READY", flush=True)
            t0 = time.perf_counter()
        if args.print_steps:  # before step_end: a preemption exits from inside it
            print(f"STEP {step + 1}", flush=True)
        if ckpt:
            ckpt.step_end(step + 1)
    elapsed = time.perf_counter() - t0
    if ckpt:
        ckpt.close(final_step=args.steps)
    n = args.steps - start - 1
    if n > 0:
        print(f"STEPS_PER_S {n / elapsed:.4f}", flush=True)


if __name__ == "__main__":
    main()
