"""A small classifier that trains on the CPU in about a minute, with kubetrain checkpoints.

    launch examples/train.py --local --nproc 2 -- --steps 300
    launch examples/train.py --gpus 8

On a GPU pod each rank trains on cuda:LOCAL_RANK over NCCL; on the CPU over
gloo. The first line each rank prints says which.

Input is synthetic (made from --seed, nothing downloaded), so two runs with
the same seed give bit-identical weights, even when one of them was
preempted and resumed: the model, optimizer, LR schedule, RNG streams and
data position all come back from the checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

from trainer import Checkpointer, ResumableSampler


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=65536, help="size of the synthetic data set")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--dropout", type=float, default=0.1, help="dropout draws from the RNG, which must resume too")
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep per step (tests use it)")
    p.add_argument("--result", default=None, help="rank 0 writes the final weights' sha256 and loss here (JSON)")
    return p.parse_args()


def synthetic_data(n: int, seed: int) -> TensorDataset:
    """A fixed 10-class problem: Gaussian blobs in 32 dimensions, with label noise."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, 32, generator=g) * 0.5
    y = torch.randint(0, 10, (n,), generator=g)
    x = centers[y] + torch.randn(n, 32, generator=g)
    return TensorDataset(x, y)


def state_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def init_device() -> tuple[torch.device, bool]:
    """cuda:LOCAL_RANK with NCCL where the pod has a GPU, else the CPU with gloo; (device, distributed)."""
    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if torch.cuda.is_available():
        device, backend = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if distributed:
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    # One write per line: the ranks share the terminal, and print's separate newline can interleave.
    print(f"rank {rank}/{world}: device {device}, backend {backend if distributed else 'none (1 process)'}\n",
          end="", flush=True)
    return device, distributed


def main() -> None:
    args = parse_args()
    device, distributed = init_device()
    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(args.seed + rank)  # per-rank streams (dropout) that the checkpoint must restore

    data = synthetic_data(args.samples, args.seed)
    sampler = ResumableSampler(len(data), seed=args.seed)
    # The loader draws a seed from `generator` each time it is iterated; its own
    # generator keeps that draw out of the global stream that dropout uses.
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, num_workers=0, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))

    init = torch.Generator().manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, args.hidden), torch.nn.ReLU(), torch.nn.Dropout(args.dropout),
                                torch.nn.Linear(args.hidden, args.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(args.hidden, 10))
    with torch.no_grad():
        for p in model.parameters():  # same init on every rank without a broadcast
            p.copy_(torch.randn(p.shape, generator=init) * 0.05)
    model.to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if distributed else model
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)

    # The sampler's position (epoch, samples consumed by all ranks) is the same on every
    # rank: replicated state, which restores even on ranks a smaller run did not have.
    ckpt = Checkpointer(model, opt, sched, extra={"sampler": sampler}, total_steps=args.steps)
    start = ckpt.restore()
    batches = sampler.batches(loader)  # epoch after epoch; a batch counts once the loop has it
    loss = torch.tensor(float("nan"))
    for step in range(start, args.steps):
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if rank == 0 and (step + 1) % 250 == 0:
            print(f"step {step + 1}/{args.steps} loss {loss.item():.4f}", flush=True)
        if args.step_sleep:
            import time

            time.sleep(args.step_sleep)
        ckpt.step_end(step + 1)
    ckpt.close(final_step=args.steps)
    if rank == 0:
        digest = state_sha256(model)
        print(f"done: {args.steps} steps, final loss {loss.item():.4f}, weights sha256 {digest[:16]}", flush=True)
        if args.result:
            with open(args.result, "w") as f:
                json.dump({"sha256": digest, "loss": loss.item(), "steps": args.steps, "resumed_from": start}, f)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
