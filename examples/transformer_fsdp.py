"""A small decoder-only transformer sharded with FSDP2, with sharded (DCP) checkpoints.

    launch examples/transformer_fsdp.py --local --nproc 2
    launch examples/transformer_fsdp.py --gpus 8 -- --dim 1024 --layers 12 --heads 16 --seq-len 1024

Each block and the whole model go through torch.distributed.fsdp.fully_shard:
every rank holds a shard of each parameter and of the optimizer state, and the
Checkpointer saves them through torch.distributed.checkpoint, every rank its
own shards (no gather to rank 0). On a GPU pod each rank trains on
cuda:LOCAL_RANK over NCCL with bf16 parameters and fp32 gradient reduction; on
the CPU over gloo in float32. The first line each rank prints says which.

The tokens are synthetic and offline: sequences walked through a fixed random
bigram table, so the loss has something to learn (down to the table's entropy).
They come through a ResumableSampler like any data set, so a resume, with the
same or another number of ranks, continues exactly where the data left off.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.data import DataLoader, TensorDataset

from trainer import Checkpointer, ResumableSampler


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--sequences", type=int, default=4096, help="size of the synthetic data set")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per rank and step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=20, help="steps of linear LR warmup, then cosine decay")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep per step (tests use it)")
    p.add_argument("--result", default=None, help="rank 0 writes the final state's sha256 and loss here (JSON)")
    return p.parse_args()


def init_device() -> torch.device:
    """cuda:LOCAL_RANK with NCCL where the pod has a GPU, else the CPU with gloo.

    FSDP needs a process group even for one process: without torchrun, a group of one.
    """
    if torch.cuda.is_available():
        device, backend = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    cuda = device if device.type == "cuda" else None
    if "RANK" in os.environ:
        dist.init_process_group(backend, device_id=cuda)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, device_id=cuda)
    # One write per line: the ranks share the terminal, and print's separate newline can interleave.
    print(f"rank {dist.get_rank()}/{dist.get_world_size()}: device {device}, backend {backend}\n", end="", flush=True)
    return device


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim, bias=False), nn.GELU(), nn.Linear(4 * dim, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class Decoder(nn.Module):
    def __init__(self, vocab: int, dim: int, layers: int, heads: int, seq_len: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def bigram_tokens(n: int, length: int, vocab: int, seed: int) -> TensorDataset:
    """n sequences of `length` + 1 tokens, each a walk through one fixed sparse random bigram table."""
    g = torch.Generator().manual_seed(seed)
    table = torch.softmax(torch.randn(vocab, vocab, generator=g) * 4, dim=-1)
    seq = torch.empty(n, length + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for t in range(length):
        seq[:, t + 1] = torch.multinomial(table[seq[:, t]], 1, generator=g).squeeze(1)
    return TensorDataset(seq)


def state_sha256(model: nn.Module, opt: torch.optim.Optimizer) -> str:
    """Of the full (unsharded) weights and optimizer state; a collective: every rank calls it."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.full_tensor().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for state in opt.state.values():
        for _, t in sorted(state.items()):
            if torch.is_tensor(t) and t.dim() > 0:
                h.update(t.full_tensor().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    args = parse_args()
    device = init_device()
    rank = dist.get_rank()
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    cuda = device.type == "cuda"
    # bf16 compute and all-gathers on a GPU, gradients reduced in fp32; fp32 throughout on the CPU.
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda else MixedPrecisionPolicy()

    torch.manual_seed(args.seed)  # the same full weights on every rank before sharding
    model = Decoder(args.vocab, args.dim, args.layers, args.heads, args.seq_len).to(device)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / max(1, args.steps - args.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    data = bigram_tokens(args.sequences, args.seq_len, args.vocab, args.seed)
    sampler = ResumableSampler(len(data), seed=args.seed)
    # Its own generator: each pass over a loader draws a seed from it, else from the global stream.
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    ckpt = Checkpointer(model, opt, sched, extra={"sampler": sampler})
    start = ckpt.restore()
    batches = sampler.batches(loader)
    loss = torch.tensor(float("nan"))
    t0 = time.monotonic()
    for step in range(start, args.steps):
        (seq,) = next(batches)
        seq = seq.to(device, non_blocking=True)
        logits = model(seq[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, args.vocab), seq[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if rank == 0 and (step + 1) % 50 == 0:
            print(f"step {step + 1}/{args.steps} loss {loss.item():.4f} "
                  f"({(time.monotonic() - t0) / (step + 1 - start) * 1000:.0f} ms/step)", flush=True)
        if args.step_sleep:
            time.sleep(args.step_sleep)
        ckpt.step_end(step + 1)
    ckpt.close(final_step=args.steps)
    digest = state_sha256(model, opt)
    if rank == 0:
        print(f"done: {args.steps} steps, final loss {loss.item():.4f}, state sha256 {digest[:16]}", flush=True)
        if args.result:
            with open(args.result, "w") as f:
                json.dump({"sha256": digest, "loss": loss.item(), "steps": args.steps, "resumed_from": start}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
