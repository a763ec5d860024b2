"""M1 on a GPU: how long a checkpoint blocks training when the state lives in CUDA memory.

    python bench/gpu_stall.py [--sizes 64,256,1024,4096] [--reps 5] [--json out.json]

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
Imports only torch and trainer, so it runs on a GPU machine without the test extras.
Without CUDA it runs on the CPU (a smoke run; bench/run.py has the CPU figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.workload import build_model  # noqa: E402
from trainer.checkpoint import Checkpointer  # noqa: E402

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,256,1024,4096", help="state sizes in MiB")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = torch.cuda.get_device_name() if device == "cuda" else "cpu only"
    print(f"device: {machine}; torch {torch.__version__}")
    print(f"{'MiB':>6} {'stall ms':>9} {'first ms':>9} {'(no prealloc)':>13} {'slowdown':>8} {'pageable ms':>12} "
          f"{'torch.save+fsync ms':>20} {'ratio':>6} {'GiB/s':>6}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mib in (int(s) for s in args.sizes.split(",")):
            r = measure(mib, args.reps, device, tmp)
            rows.append(r)
            print(f"{mib:>6} {r['stall_s'] * 1e3:>9.1f} {r['first_save_s'] * 1e3:>9.1f} "
                  f"{r['first_no_prealloc_s'] * 1e3:>13.1f} {r['slowdown_while_allocating']:>8.2f} "
                  f"{r['pageable_copy_s'] * 1e3:>12.1f} {r['torch_save_fsync_s'] * 1e3:>20.1f} "
                  f"{r['ratio']:>6.3f} {r['d2h_GiBps']:>6.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": machine, "torch": torch.__version__, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
