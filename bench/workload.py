"""A training loop whose state has a chosen size, for the benchmarks.

    python -m trainer run bench/workload.py --mib 256 --steps 100000 --step-ms 50

Each step is a cheap in-place update of every parameter plus a sleep, so the
step time is set by --step-ms rather than by this machine's CPU. Prints
`READY` once the first step ran (after restore).
"""

from __future__ import annotations

import argparse
import time

import torch

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
    p.add_argument("--step-ms", type=float, default=50)
    args = p.parse_args()
    model = build_model(args.mib)
    ckpt = Checkpointer(model)
    start = ckpt.restore()
    for step in range(start, args.steps):
        with torch.no_grad():
            for param in model.parameters():
                param.mul_(0.9999)
        time.sleep(args.step_ms / 1000)
        if step == start:
            print("READY", flush=True)
        ckpt.step_end(step + 1)
    ckpt.close(final_step=args.steps)


if __name__ == "__main__":
    main()
