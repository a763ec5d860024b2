"""An image classifier from torchvision (ResNet-18), resumable exactly, with DataLoader workers.

    launch examples/image_classifier.py --local --nproc 2
    launch examples/image_classifier.py --gpus 8 -- --data /data/imagenet/train --image-size 224

Offline by default: torchvision's FakeData (images made from their index).
With --data, any ImageFolder tree (one folder per class), e.g. on a PVC.
On a GPU pod each rank trains on cuda:LOCAL_RANK over NCCL with bf16 autocast;
on the CPU over gloo in float32. The first line each rank prints says which.

What makes it resume exactly (and what `launch chaos --local` checks):
- the model, optimizer and LR schedule are in the Checkpointer;
- the data position is the ResumableSampler's, in extra= (the same on every
  rank), counted by `sampler.batches(loader)`: what the loop took, not what the
  workers prefetched;
- augmentation is seeded from (seed, epoch, sample index) in the worker, so it
  does not depend on which worker drew the sample or on a restart;
- the per-rank RNG streams (dropout) come back from the checkpoint.
Requires torchvision: `pip install 'kubetrain[examples]'` (scripts/setup does).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from trainer import Checkpointer, ResumableSampler
from trainer.data import sample_seed

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="an ImageFolder directory (default: FakeData, nothing downloaded)")
    p.add_argument("--fake-samples", type=int, default=2048, help="FakeData: images in the data set")
    p.add_argument("--classes", type=int, default=10, help="FakeData: classes")
    p.add_argument("--image-size", type=int, default=32, help="side of the (cropped) training images")
    p.add_argument("--arch", default="resnet18", help="a torchvision.models name (resnet18, mobilenet_v3_small, ...)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per rank")
    p.add_argument("--no-amp", action="store_true", help="float32 on the GPU too (default there: bf16 autocast)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep per step (tests use it)")
    p.add_argument("--result", default=None, help="rank 0 writes the final weights' sha256 and loss here (JSON)")
    return p.parse_args()


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


class Augmented(Dataset):
    """`base`'s images through `transform`, each with randomness seeded from (seed, epoch, index).

    A loader worker's own stream depends on which worker got the batch and on how
    many batches it drew before, which a restart changes; the sample does not.
    """

    def __init__(self, base: Dataset, transform: T.Transform, seed: int) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:  # ResumableSampler.batches calls it before each epoch
        self.epoch = epoch

    def __getitem__(self, i: int):
        image, label = self.base[i]
        with torch.random.fork_rng(devices=[]):  # leave the process's own stream alone (num_workers=0)
            torch.manual_seed(sample_seed(self.seed, self.epoch, i))
            return self.transform(image), label


def dataset(args: argparse.Namespace) -> tuple[Dataset, int]:
    size = args.image_size
    if args.data:
        base = torchvision.datasets.ImageFolder(args.data)
        crop = T.RandomResizedCrop(size, antialias=True)
        classes = len(base.classes)
    else:
        base = torchvision.datasets.FakeData(args.fake_samples, image_size=(3, size, size),
                                             num_classes=args.classes, random_offset=args.seed)
        crop = T.RandomCrop(size, padding=size // 8)
        classes = args.classes
    transform = T.Compose([T.ToImage(), crop, T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True),
                           T.Normalize(MEAN, STD)])
    return Augmented(base, transform, args.seed), classes


def state_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    args = parse_args()
    device, distributed = init_device()
    rank = dist.get_rank() if distributed else 0
    amp = device.type == "cuda" and not args.no_amp
    torch.manual_seed(args.seed)  # the same initial weights on every rank

    data, classes = dataset(args)
    model = torchvision.models.get_model(args.arch, weights=None, num_classes=classes).to(device)
    torch.manual_seed(args.seed + rank)  # per-rank streams (dropout) that the checkpoint must restore
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if distributed else model
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.15)

    sampler = ResumableSampler(len(data), seed=args.seed)
    # Its own generator: each pass over the loader draws a seed for its workers, which
    # would otherwise come from (and shift) the global stream the checkpoint restores.
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=False,
                        generator=torch.Generator().manual_seed(args.seed))
    ckpt = Checkpointer(model, opt, sched, extra={"sampler": sampler})
    start = ckpt.restore()
    batches = sampler.batches(loader)  # epoch after epoch; a batch counts once the loop has it
    loss = torch.tensor(float("nan"))
    t0 = time.monotonic()
    for step in range(start, args.steps):
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(ddp(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if rank == 0 and (step + 1) % 50 == 0:
            print(f"step {step + 1}/{args.steps} loss {loss.item():.4f} epoch {sampler.epoch} "
                  f"({(time.monotonic() - t0) / (step + 1 - start) * 1000:.0f} ms/step)", flush=True)
        if args.step_sleep:
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
