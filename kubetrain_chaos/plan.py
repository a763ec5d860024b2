"""What a `launch chaos --local` check will do: the plan, and the faults drawn from its seed.

The script runs twice under `python -m trainer run`, with the same ranks and checkpoint
cadence: once without faults (the reference), and once under faults injected at seeded
random steps, restarted after each exit the way the Kubeflow operator would restart a pod.

Faults (--kinds): sigterm (a spot notice: SIGTERM to the supervisor, grace applies),
kill-worker (SIGKILL of one rank's process, never one of its DataLoader workers),
kill-during-upload (SIGKILL of every process while a checkpoint is written but not
committed), corrupt-checkpoint (a graceful stop, then the newest committed checkpoint is
damaged on disk), storage-outage (checkpoint writes fail for a while; training must go on
or exit retryably). Asked for by name only: kill-loader-worker (SIGKILL of one DataLoader
worker process of one rank: the runtime must retry it as an infrastructure fault).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shlex

from trainer import contract
from trainer.errors import UsageError

#: The default mix; every kind of it is drawn before any repeats.
KINDS = contract.CHAOS_KINDS
ALL_KINDS = contract.CHAOS_KINDS + contract.CHAOS_EXTRA_KINDS


@dataclasses.dataclass(frozen=True)
class ChaosPlan:
    script: str
    script_args: tuple[str, ...] = ()
    nproc: int = 2
    faults: int = 5
    seed: int = 0
    kinds: tuple[str, ...] = KINDS
    every_steps: int = 20
    grace_seconds: float = 30.0
    #: None: states must be bit-identical; else floating-point state within this (rtol = atol).
    tolerance: float | None = None
    #: Where checkpoints and logs go; a fresh temp folder by default.
    workdir: str | None = None
    #: Seconds for the whole check, both runs and every restart.
    timeout: float = 3600.0

    def __post_init__(self) -> None:
        if not os.path.isfile(self.script):
            raise UsageError(f"script {self.script!r} does not exist or is not a file")
        if self.nproc < 1 or self.faults < 1 or self.every_steps < 1:
            raise UsageError("--nproc, --faults and --checkpoint-every-steps must be >= 1")
        unknown = [k for k in self.kinds if k not in ALL_KINDS]
        if unknown or not self.kinds:
            raise UsageError(f"unknown fault kind(s) {', '.join(unknown) or '(none given)'}; "
                             f"choose from {', '.join(ALL_KINDS)}")
        if not os.path.isdir("/proc/self"):
            raise UsageError("launch chaos --local finds the ranks through /proc: it needs Linux")
        if self.tolerance is not None and not self.tolerance >= 0:
            raise UsageError(f"--tolerance must be >= 0, got {self.tolerance}")


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    at_step: int


def plan_faults(n: int, kinds: tuple[str, ...], total_steps: int, every_steps: int, rng: random.Random) -> list[Fault]:
    """n faults at distinct random steps after the first checkpoint; every kind before any repeats."""
    # After the first checkpoint had time to commit: the faulted run's fault-free prefix
    # is compared with the reference to tell the script's own non-determinism apart.
    lo = min(every_steps + max(1, every_steps // 2), max(1, total_steps // 4))
    hi = total_steps - max(1, every_steps // 2)  # progress is read 4x a second: leave room before the end
    candidates = list(range(lo, max(lo + 1, hi)))
    steps = sorted(rng.sample(candidates, min(n, len(candidates))))
    order: list[str] = []
    while len(order) < len(steps):
        batch = list(kinds)
        rng.shuffle(batch)
        order += batch
    return [Fault(kind, step) for kind, step in zip(order, steps)]


def reproduce_command(p: ChaosPlan) -> str:
    """The `launch chaos` command line that replays this plan: same faults at the same steps."""
    cmd = ["launch", "chaos", p.script, "--local", "--nproc", str(p.nproc), "--faults", str(p.faults),
           "--seed", str(p.seed)]
    defaults = ChaosPlan.__dataclass_fields__
    if p.kinds != KINDS:
        cmd += ["--kinds", ",".join(p.kinds)]
    if p.every_steps != defaults["every_steps"].default:
        cmd += ["--checkpoint-every-steps", str(p.every_steps)]
    if p.grace_seconds != defaults["grace_seconds"].default:
        cmd += ["--grace-seconds", f"{p.grace_seconds:g}"]
    if p.tolerance is not None:
        cmd += ["--tolerance", f"{p.tolerance:g}"]
    if p.script_args:
        cmd += ["--", *p.script_args]
    return shlex.join(cmd)
