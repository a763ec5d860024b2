"""M1 on a GPU: how long a checkpoint blocks training when the state lives in CUDA memory.

    python -m bench gpu-stall --sizes 64,256,1024,4096 [--reps 5]

Per state size, in one process (ratios, since shared machines are noisy):
  stall       Checkpointer.save(): the snapshot into reused pinned host buffers;
              the write runs in the background (median of --reps, after a first save)
  first       the first save after the first step_end(), which starts allocating the pinned
              buffers (cudaHostAlloc) on a background thread, and a few training steps;
              `first_no_prealloc` is a first save with nothing allocated ahead (how it was)
  slowdown    training steps run while those buffers are allocated vs the same steps before
  pageable    the same copies into reused pageable (unpinned) buffers
  baseline    torch.save of the CUDA state_dict + fsync to local disk, what a
              training loop does when it checkpoints synchronously
Needs only torch and trainer (no moto, no boto3), so it runs on a GPU machine without the
test extras. Without CUDA it runs on the CPU (a smoke run; M1 has the CPU figures).
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from bench.context import Context
from bench.workload import build_model
from trainer.checkpoint import Checkpointer

MiB = 1 << 20


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def pageable_copy(state: dict, bufs: dict) -> None:
    """The snapshot without pinned memory: blocking copies into reused pageable buffers."""
    for k, v in state.items():
        b = bufs.get(k)
        if b is None:
            b = bufs[k] = torch.empty(v.shape, dtype=v.dtype)
        b.copy_(v)


def save_fsync(state: dict, path: str) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def train_steps(device: str, n: int = 20) -> None:
    """A stand-in for training work on the device: n matrix products."""
    a = torch.randn(2048, 2048, device=device)
    for _ in range(n):
        a = torch.tanh(a @ a)


def measure(mib: int, reps: int, device: str, tmp: str) -> dict:
    model = build_model(mib).to(device)
    cold = Checkpointer(model, uri=os.path.join(tmp, f"cold-{mib}"), run_id="r", keep=1)
    first_no_prealloc = timed(lambda: cold.save(1), device)
    cold.close()
    del cold
    ckpt = Checkpointer(model, uri=os.path.join(tmp, f"ckpt-{mib}"), run_id="r", keep=1, every_steps=10**9)
    before = statistics.median(timed(lambda: train_steps(device), device) for _ in range(3))
    step_end = timed(lambda: ckpt.step_end(1), device)  # starts the background allocation
    during = timed(lambda: train_steps(device), device)
    first = timed(lambda: ckpt.save(1), device)
    ckpt.wait()
    stalls = []
    for i in range(reps):
        stalls.append(timed(lambda: ckpt.save(i + 2), device))
        ckpt.wait()
    ckpt.close()
    state = model.state_dict()
    bufs: dict = {}
    pageable_copy(state, bufs)  # allocate and fault in once, as the pinned path reuses its buffers
    pageable = statistics.median(timed(lambda: pageable_copy(state, bufs), device) for _ in range(reps))
    del bufs
    base = statistics.median(timed(lambda: save_fsync(state, os.path.join(tmp, "base.pt")), device)
                             for _ in range(max(2, reps // 2)))
    os.unlink(os.path.join(tmp, "base.pt"))
    stall = statistics.median(stalls)
    del model, ckpt, state
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"mib": mib, "stall_s": stall, "first_save_s": first, "first_no_prealloc_s": first_no_prealloc,
            "first_step_end_s": step_end, "slowdown_while_allocating": during / before, "pageable_copy_s": pageable,
            "torch_save_fsync_s": base, "ratio": stall / base, "d2h_GiBps": mib / 1024 / stall,
            "pageable_vs_pinned": pageable / stall, "target": 0.05}


def run(ctx: Context) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = torch.cuda.get_device_name() if device == "cuda" else "cpu only"
    return {"device": machine, "torch": torch.__version__, **measure(ctx.mib, ctx.reps, device, ctx.tmp)}
