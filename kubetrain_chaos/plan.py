"""What a `launch chaos --local` check will do: the plan, and the faults drawn from its seed.

The script runs twice under `python -m trainer run`, with the same ranks: once without faults
(the reference), and once under faults placed so that its restarts resume at steps chosen to
cover residues of small periods and an epoch's edges (coverage.py), restarted after each exit the
way the Kubeflow operator would restart a pod.

Faults (--kinds): sigterm (a spot notice: SIGTERM to the supervisor, grace applies),
kill-worker (SIGKILL of one rank's process, never one of its DataLoader workers),
kill-during-upload (SIGKILL of rank 0 at a named phase of a commit: files, manifest, `latest`
being replaced, `latest` replaced, prune), corrupt-checkpoint (a graceful stop, then the newest committed checkpoint is
damaged on disk), storage-outage (checkpoint writes fail for a while; training must go on
or exit retryably). Asked for by name only: kill-loader-worker (SIGKILL of one DataLoader
worker process of one rank: the runtime must retry it as an infrastructure fault).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shlex

from kubetrain_chaos import coverage
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
    #: A pre-merge check: every kind and commit phase, every residue mod 2..8 (plan_faults).
    thorough: bool = False
    #: Steps per epoch, when the script has epochs: resumes are placed at an epoch's first and last step.
    epoch_steps: int | None = None
    #: Let the runtime recover a killed rank in place (--in-place-restarts); False (--no-in-place): every
    #: such fault ends its attempt, and the run restarts as a replaced pod would.
    in_place: bool = True

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
        if self.epoch_steps is not None and self.epoch_steps < 2:
            raise UsageError(f"--epoch-steps must be >= 2, got {self.epoch_steps}")
        if self.tolerance is not None and not self.tolerance >= 0:
            raise UsageError(f"--tolerance must be >= 0, got {self.tolerance}")


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    at_step: int
    #: The step the restart after this fault resumes from, made so by the plan (None: not chosen, a
    #: SIGTERM's stop step is where the ranks agree to stop, which depends on timing).
    resume_at: int | None = None
    #: --checkpoint-every-steps of the attempt this fault ends (None: the plan's, as the reference's).
    every_steps: int | None = None
    #: kill-during-upload: rank 0 is SIGKILLed when the commit of `commit_step` reaches `phase`
    #: (contract.COMMIT_PHASES, through contract.FAULT_KILL_AT): a kill at a named point, not a time.
    phase: str | None = None
    commit_step: int | None = None
    #: --keep of the attempt this fault ends (None: every step kept); 1 makes its commit prune.
    keep: int | None = None


#: Faults after which the run restarts; a storage outage is ridden out (or exits on its own).
ENDING_KINDS = ("sigterm", "kill-worker", "kill-loader-worker", "kill-during-upload", "corrupt-checkpoint")
#: Faults the runtime may recover in place (a fresh torchrun in the same supervisor, trainer/supervisor/in_place.py).
IN_PLACE_KINDS = ("kill-worker", "kill-loader-worker")
#: Faults whose resume step the plan chooses: the attempt they end commits the chosen step and
#: nothing after it before the fault (its cadence is that step), so the restart resumes from it.
TARGETED_KINDS = ("kill-worker", "kill-loader-worker", "kill-during-upload", "corrupt-checkpoint")
#: Commit phases whose kill leaves the step uncommitted (resume from the one before), and those after the commit point.
_BEFORE_COMMIT = ("files", "manifest", "latest-tmp")
#: --thorough: every commit phase but "latest" once (a kill after the commit point is a kill-worker after a commit).
#: --thorough resumes at this many consecutive steps: every residue of every period up to it, and,
#: placed across an epoch boundary, an epoch's last step and the next one's first.
BLOCK = max(coverage.PERIODS)
THOROUGH_PHASES = ("files", "manifest", "latest-tmp", "prune")
#: Steps a SIGTERM may run on before the ranks agree to stop: two agreement strides
#: (trainer/checkpoint/agreement.py: AGREE_MAX_STEPS each), plus a margin for the driver's polling.
_STOP_SLACK = 12
_MIN_SLOT = 6  # the fewest steps one fault's attempt gets: its target, the fault, room after it


def _kind_order(n: int, kinds: tuple[str, ...], thorough: bool, rng: random.Random) -> tuple[list[str], list[str | None]]:
    """Kinds in fault order (every kind before any repeats; outages last) and each kill-during-upload's phase."""
    order: list[str] = []
    while len(order) < n:
        batch = list(kinds)
        rng.shuffle(batch)
        order += batch
    order = order[:n]
    if thorough:  # every kind, every commit phase once, and a block of kills resumed at consecutive steps
        extra = ["kill-during-upload"] * (len(THOROUGH_PHASES) - 1) if "kill-during-upload" in kinds else []
        order = list(kinds) + extra
    rng.shuffle(order)
    order = [k for k in order if k != "storage-outage"] + [k for k in order if k == "storage-outage"]
    phases: list[str | None] = []
    todo = list(THOROUGH_PHASES) if thorough else []
    for k in order:
        if k != "kill-during-upload":
            phases.append(None)
        elif todo:
            phases.append(todo.pop(rng.randrange(len(todo))))
        else:
            phases.append(rng.choice(contract.COMMIT_PHASES))
    return order, phases


def plan_faults(n: int, kinds: tuple[str, ...], total_steps: int, every_steps: int, rng: random.Random, *,
                epoch_steps: int | None = None, thorough: bool = False) -> list[Fault]:
    """n faults (--thorough: every kind, every commit phase and a block of BLOCK) whose restarts resume at steps chosen to cover.

    The run between two faults is one attempt. The first attempt keeps the reference's cadence (its
    checkpoints are a second fault-free run, compared with the reference); each later attempt that
    a targeted fault ends checkpoints at its chosen resume step and not again before the fault, so
    the restart resumes from exactly that step whatever the machine's speed. The steps are chosen
    one slot of the run at a time, each the one that adds most to what the resumes so far cover
    (coverage.score), ties drawn from the seed. SIGTERMs resume where the ranks agree to stop
    (timing): they add to the coverage, never counted on. Storage outages come last, in an
    attempt with the reference's cadence, so that at least one save fails.
    """
    order, phases = _kind_order(n, kinds, thorough, rng)
    g = coverage.goal(thorough, epoch_steps)
    E = every_steps
    outages = order.count("storage-outage")
    # After the first checkpoint had time to commit: the faulted run's fault-free prefix
    # is compared with the reference to tell the script's own non-determinism apart.
    lo = min(E + max(1, E // 2), max(1, total_steps // 4))
    end = total_steps - max(1, E // 2)  # progress is read 4x a second: leave room before the end
    outage_room = (E + max(1, E // 2) + _MIN_SLOT) if outages else 0
    hi = max(lo + 1, end - outage_room)
    ending = [(k, ph) for k, ph in zip(order, phases) if k != "storage-outage"]
    filler = next((k for k in ("kill-worker", *TARGETED_KINDS) if k in kinds), None)
    block = thorough and filler is not None
    slots = min(len(ending) + block, max(1 if not outages else 0, (hi - lo) // _MIN_SLOT))
    if block and slots >= 2:  # the block: BLOCK resumes in a row, in a slot after the first, across an epoch boundary
        w = (hi - lo) // slots
        fits = [i for i in range(1, slots) if _block_starts(lo + i * w, lo + (i + 1) * w - BLOCK - 3, epoch_steps)]
        ending.insert(rng.choice(fits or list(range(1, slots))), ("block", filler))
    ending = ending[:slots]
    width = (hi - lo) // slots if slots else 0
    faults: list[Fault] = []
    resumes: list[int] = []
    floor = 1  # the next attempt starts after this step: a target must lie past it
    for i, (kind, phase) in enumerate(ending):
        s_lo, s_hi = lo + i * width, lo + (i + 1) * width
        if kind == "block":
            a = _block_start(max(s_lo, floor + 1), s_hi - BLOCK - 3, epoch_steps, rng)
            for r in range(a, a + BLOCK):
                resumes.append(r)
                faults.append(_targeted(phase, None, r, None, r + 1, rng))
            floor = a + BLOCK - 1
            continue
        if kind not in TARGETED_KINDS:  # a SIGTERM: early in its slot, so its stop lands in the slot
            at = max(floor + 1, s_lo + rng.randrange(max(1, width // 4)))
            faults.append(Fault(kind, at))
            floor = at + _STOP_SLACK
            continue
        if i == 0:  # the reference's cadence: resume at a multiple of it
            # A kill while pruning needs a step before r to prune: not the attempt's first commit.
            first = 2 * E if phase == "prune" else E
            cands = [r for r in range(first, s_hi, E) if r >= s_lo - E] or [first]
        else:
            tail = _tail(kind, phase)
            cands = [r for r in range(max(s_lo, floor + 1), s_hi - tail)] or [max(s_lo, floor + 1)]
        rng.shuffle(cands)
        r = max(cands, key=lambda c: coverage.score(resumes + [c], epoch_steps, g))
        resumes.append(r)
        f = _targeted(kind, phase, r, E if i == 0 else None, s_hi, rng)
        faults.append(f)
        # The next attempt starts from r; a commit cut after r may leave an intact step folder that
        # is not committed, which a later fallback past a damaged step could take: target past it.
        floor = max(r, f.commit_step or 0)
    for _ in range(outages):  # in the last attempt, which has the reference's cadence
        at = max(floor + 1, hi)
        if at + E + max(1, E // 2) < total_steps:
            faults.append(Fault("storage-outage", at))
            floor = at + E + max(1, E // 2)
    return faults


def _block_starts(lo: int, hi: int, epoch_steps: int | None) -> list[int]:
    """Starts in [lo, hi] of a block that holds an epoch's last step and the next one's first."""
    if not epoch_steps or epoch_steps < 2:
        return []
    return [b - k for b in range(epoch_steps, hi + BLOCK, epoch_steps) for k in range(1, BLOCK) if lo <= b - k <= hi]


def _block_start(lo: int, hi: int, epoch_steps: int | None, rng: random.Random) -> int:
    """Where the block of consecutive resumes starts: across an epoch boundary when the epoch is known."""
    if hi <= lo:
        return lo
    starts = _block_starts(lo, hi, epoch_steps)
    return rng.choice(starts) if starts else lo + rng.randrange(hi - lo + 1)


def _tail(kind: str, phase: str | None) -> int:
    """Steps past its resume step an attempt runs before its fault: room a slot leaves after the target."""
    if kind == "corrupt-checkpoint":
        return 3 + _STOP_SLACK
    if kind == "kill-during-upload" and phase in _BEFORE_COMMIT:
        return 4  # the commit cut short is one cadence (a divisor of the target) after it
    return 3


def _targeted(kind: str, phase: str | None, r: int, cadence: int | None, s_hi: int, rng: random.Random) -> Fault:
    """The fault that makes its restart resume from step r. `cadence`: the attempt's, when it is
    fixed (the first attempt keeps the reference's); else the plan picks it: r itself, so r is
    the attempt's one checkpoint before its fault."""
    if kind == "kill-during-upload":
        assert phase is not None
        if phase not in _BEFORE_COMMIT:  # killed at or after the commit point of r: r is committed
            return Fault(kind, r, r, cadence or r, phase, r, keep=1 if phase == "prune" else None)
        # Cut the commit after r: the attempt checkpoints every c steps, c a divisor of r, the
        # largest that keeps the cut commit r + c inside the slot.
        c = cadence or max(d for d in range(1, r + 1) if r % d == 0 and (r + d < s_hi or d == 1))
        return Fault(kind, r + c, r, c, phase, r + c)
    return Fault(kind, r + 1 + rng.randrange(2), r, cadence or r)


def in_place_budget(enders: list[Fault], every: int, keep: int | None, tail_every: int | None) -> int:
    """How many of an attempt's coming faults (`enders`, in order) its supervisor may recover in place.

    An in-place restart keeps the supervisor's --checkpoint-every-steps and --keep, so a kill is recovered
    in place only when the fault after it would have run in an attempt with the same ones and no kill point
    armed at its start; after the last one, `tail_every` (the cadence a storage outage needs; None: any).
    Pure: the plan decides, so a recorded run is judged the same whatever the machine's speed.
    """
    n = 0
    for i, f in enumerate(enders):
        if f.kind not in IN_PLACE_KINDS:
            break
        nxt = enders[i + 1] if i + 1 < len(enders) else None
        if nxt is None:
            if tail_every is not None and tail_every != every:
                break
        elif (nxt.every_steps or every) != every or nxt.keep != keep or nxt.commit_step is not None:
            break
        n += 1
    return n


def estimate_seconds(faults: list[Fault], total_steps: int, reference_seconds: float, startup_seconds: float,
                     grace_seconds: float) -> float:
    """About how long the faulted run takes: every step once, the steps redone after each restart,
    each restart's start, and a SIGTERM's stop. An estimate printed before the run, never a limit."""
    step = max(0.0, reference_seconds - startup_seconds) / max(1, total_steps)
    ending = [f for f in faults if f.kind in ENDING_KINDS]
    redone = sum(max(0, f.at_step - (f.resume_at if f.resume_at is not None else f.at_step)) for f in ending)
    stops = sum(f.kind in ("sigterm", "corrupt-checkpoint") for f in ending)
    per_restart = startup_seconds + 2.0  # the start, and the restore
    return (reference_seconds + step * redone + per_restart * len(ending) + stops * min(grace_seconds, 5.0))


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
    if p.epoch_steps is not None:
        cmd += ["--epoch-steps", str(p.epoch_steps)]
    if p.thorough:
        cmd += ["--thorough"]
    if not p.in_place:
        cmd += ["--no-in-place"]
    if p.script_args:
        cmd += ["--", *p.script_args]
    return shlex.join(cmd)
