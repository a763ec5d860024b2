"""`launch chaos --local`: prove that a training script resumes correctly, before production does.

The script runs twice under `python -m trainer run`, with the same ranks and
checkpoint cadence: once without faults (the reference), and once under faults
injected at seeded random steps, restarted after each exit the way the Kubeflow
operator would restart a pod. Then the invariants are checked:

  completed        the faulted run finished (exit 0) within its restart budget
  final step       it ended at the reference's final step
  identical state  every checkpoint both runs committed at the same step holds the
                   same state (bit for bit; or floating-point state within
                   --tolerance for scripts that are not deterministic); the first
                   that differs is pinned on the fault before it
  valid resume     every restart resumed from the newest checkpoint that was
                   committed and intact at that moment: never a partial one
  retryable exits  every fault ended the run with a code the operator retries (>= 128)
  sigterm          a preemption committed its stop step and redid nothing

Faults (--kinds): sigterm (a spot notice: SIGTERM to the supervisor, grace applies),
kill-worker (SIGKILL of one rank), kill-during-upload (SIGKILL of every process
while a checkpoint is written but not committed), corrupt-checkpoint (a graceful
stop, then the newest committed checkpoint is damaged on disk), storage-outage
(checkpoint writes fail for a while; training must go on or exit retryably).

This module drives processes and reads checkpoints with torch; the launcher
imports it only for `launch chaos --local`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from trainer import contract
from trainer.checkpoint import layout
from trainer.errors import UsageError

KINDS = contract.CHAOS_KINDS
_KEEP_EVERYTHING = "1000000"  # both runs keep every step, so they can be compared step by step
_SLOW_COMMIT_S = "1.0"  # the window a kill-during-upload has between a step's files and its manifest


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
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise UsageError(f"unknown fault kind(s) {', '.join(unknown) or '(none given)'}; "
                             f"choose from {', '.join(KINDS)}")
        if not os.path.isdir("/proc/self"):
            raise UsageError("launch chaos --local finds the ranks through /proc: it needs Linux")
        if self.tolerance is not None and not self.tolerance >= 0:
            raise UsageError(f"--tolerance must be >= 0, got {self.tolerance}")


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    at_step: int


@dataclasses.dataclass
class FaultRecord:
    fault: Fault
    injected_at: int | None = None  # the ranks' progress when it hit (None: the run ended first)
    exit_code: int | None = None  # None: the run went on (an outage it rode out)
    stop_step: int | None = None  # sigterm / corrupt-checkpoint: the step the stop committed
    expected_resume: int | None = None  # newest intact committed step when it restarted
    resumed_from: int | None = None
    detail: str = ""

    @property
    def redone(self) -> int | None:
        if self.injected_at is None or self.resumed_from is None:
            return None
        return max(0, max(self.injected_at, self.stop_step or 0) - self.resumed_from)


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclasses.dataclass
class ChaosReport:
    plan: ChaosPlan
    reference_steps: int
    reference_seconds: float
    records: list[FaultRecord]
    checks: list[Check]
    workdir: str

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def summary(self) -> str:
        return format_report(self)


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


# --- checkpoints on local disk -------------------------------------------------


def committed_steps(run_dir: str) -> list[int]:
    """Steps with an intact manifest whose every file matches its size and sha256, newest first."""
    if not os.path.isdir(run_dir):
        return []
    good = []
    for step in sorted(layout.steps_in_listing(os.listdir(run_dir)), reverse=True):
        if _intact(os.path.join(run_dir, contract.step_dir_name(step)), step):
            good.append(step)
    return good


def _manifest(step_dir: str, step: int) -> layout.Manifest | None:
    try:
        with open(os.path.join(step_dir, contract.MANIFEST_NAME), "rb") as f:
            return layout.manifest_from_bytes(f.read(), expect_step=step)
    except (OSError, ValueError, KeyError):
        return None


def _intact(step_dir: str, step: int) -> bool:
    m = _manifest(step_dir, step)
    if m is None:
        return False
    for name, info in m.files.items():
        try:
            with open(os.path.join(step_dir, name), "rb") as f:
                data = f.read()
        except OSError:
            return False
        if len(data) != info.size or hashlib.sha256(data).hexdigest() != info.sha256:
            return False
    return True


def corrupt_step(run_dir: str, step: int) -> str:
    """Flip bytes in the middle of the step's largest file; return its name."""
    step_dir = os.path.join(run_dir, contract.step_dir_name(step))
    m = _manifest(step_dir, step)
    assert m is not None
    name = max(m.files, key=lambda k: m.files[k].size)
    with open(os.path.join(step_dir, name), "r+b") as f:
        f.seek(m.files[name].size // 2)
        b = f.read(8)
        f.seek(m.files[name].size // 2)
        f.write(bytes(x ^ 0xFF for x in b))
    return name


def diff_states(a: Any, b: Any, tolerance: float | None, path: str = ""):
    """Yield (path, how) for every leaf where two loaded checkpoint objects differ."""
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            yield path, f"shape/dtype {tuple(a.shape)}/{a.dtype} vs {tuple(b.shape)}/{b.dtype}"
        elif tolerance is not None and a.is_floating_point():
            if not torch.allclose(a, b, rtol=tolerance, atol=tolerance, equal_nan=True):
                yield path, f"max |difference| {(a.double() - b.double()).abs().max().item():.3g} > {tolerance:g}"
        elif not torch.equal(a.nan_to_num(), b.nan_to_num()) if a.is_floating_point() else not torch.equal(a, b):
            yield path, (f"max |difference| {(a.double() - b.double()).abs().max().item():.3g}"
                         if a.is_floating_point() else f"{int((a != b).sum())} of {a.numel()} values differ")
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            yield path, f"keys {sorted(map(str, set(a) ^ set(b)))} in only one of them"
        for k in a.keys() & b.keys():
            yield from diff_states(a[k], b[k], tolerance, f"{path}.{k}" if path else str(k))
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            yield path, f"length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            yield from diff_states(x, y, tolerance, f"{path}.{i}" if path else str(i))
    elif type(a).__name__ == "ndarray" and type(b).__name__ == "ndarray":  # numpy RNG state
        if a.shape != b.shape or not (a == b).all():
            yield path, "arrays differ"
    elif isinstance(a, float) and isinstance(b, float) and tolerance is not None:
        if abs(a - b) > tolerance * max(1.0, abs(b)):
            yield path, f"{a} vs {b}"
    elif a != b:
        yield path, f"{a!r} vs {b!r}"


def diff_steps(ref_dir: str, run_dir: str, step: int, tolerance: float | None) -> dict[str, str]:
    """'file:path' -> how, for everything that differs between the same step of two runs."""
    import torch

    name = contract.step_dir_name(step)
    ma, mb = _manifest(os.path.join(ref_dir, name), step), _manifest(os.path.join(run_dir, name), step)
    assert ma is not None and mb is not None
    out: dict[str, str] = {}
    for f in sorted(set(ma.files) ^ set(mb.files)):
        out[f] = "in only one of the runs"
    for f in sorted(set(ma.files) & set(mb.files)):
        if not f.endswith(".pt"):  # sharded (DCP) data: bytes, by checksum
            if f.endswith("/.metadata"):
                continue  # DCP's index holds a fresh save id on every save; the shards it indexes are compared
            if ma.files[f].sha256 != mb.files[f].sha256 and tolerance is None:
                out[f] = "contents differ"
            continue

        def load(d: str) -> Any:
            return torch.load(os.path.join(d, name, f), map_location="cpu", weights_only=False)

        for path, how in diff_states(load(ref_dir), load(run_dir), tolerance):
            out[f"{f}:{path}"] = how
    return out


def _stream(key: str) -> str:
    """'rank-00000.pt:rng.python.1.7' -> 'rank-00000.pt:rng.python': one RNG stream."""
    f, _, path = key.partition(":")
    return f"{f}:{'.'.join(path.split('.')[:2])}"


# --- processes -------------------------------------------------------------------


@dataclasses.dataclass
class _Attempt:
    proc: subprocess.Popen
    control: str
    log_path: str

    def progress(self) -> int:
        """The step every rank has reached (their heartbeats), 0 before the first."""
        steps = []
        try:
            names = os.listdir(self.control)
        except OSError:
            return 0
        for n in names:
            if n.startswith(contract.CONTROL_PROGRESS_PREFIX):
                try:
                    with open(os.path.join(self.control, n)) as f:
                        steps.append(int(f.read().split()[0]))
                except (OSError, ValueError, IndexError):
                    pass
        return min(steps) if steps else 0

    def workers(self) -> dict[int, int]:
        """rank -> pid of this attempt's training processes."""
        return {rank: pid for pid, rank, _ in _processes_with(self.control) if rank is not None}

    def kill_all(self) -> None:
        """SIGKILL every process of the attempt, as a node loss would."""
        self.proc.kill()
        for pid, _, _ in _processes_with(self.control):
            _signal(pid, signal.SIGKILL)

    def exit_code(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            rc = self.proc.wait()
        deadline = time.monotonic() + 10  # orphans of a killed supervisor must be gone before a restart
        while _processes_with(self.control) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid, _, _ in _processes_with(self.control):
            _signal(pid, signal.SIGKILL)
        return rc if rc >= 0 else 128 - rc

    def log_lines(self) -> list[str]:
        with open(self.log_path, errors="replace") as f:
            return f.read().splitlines()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _processes_with(control: str) -> list[tuple[int, int | None, str]]:
    """(pid, RANK or None, cmdline) of live processes whose environment names this control folder."""
    marker = f"{contract.ENV_CONTROL_DIR}={control}".encode()
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        if marker not in env:
            continue
        rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
        out.append((int(pid), rank if "trainer.worker" in cmd else None, cmd))
    return out


class _Runner:
    def __init__(self, plan: ChaosPlan, workdir: str, echo: Callable[[str], None]) -> None:
        self.plan, self.workdir, self.echo = plan, workdir, echo
        self.ckpt = os.path.join(workdir, "checkpoints")
        self.faults_dir = os.path.join(workdir, "faults")
        os.makedirs(self.faults_dir, exist_ok=True)
        self.n = 0
        #: Steps damaged on purpose: not compared with the reference.
        self.corrupted: set[int] = set()
        self.current: _Attempt | None = None

    def run_dir(self, run_id: str) -> str:
        return os.path.join(self.ckpt, run_id)

    def start(self, run_id: str) -> _Attempt:
        self.n += 1
        control = os.path.join(self.workdir, f"control-{self.n}")
        log_path = os.path.join(self.workdir, f"{run_id}-{self.n}.log")
        p = self.plan
        cmd = [sys.executable, "-m", "trainer", "run", "--nproc-per-node", str(p.nproc), "--checkpoint", self.ckpt,
               "--run-id", run_id, "--checkpoint-every-steps", str(p.every_steps),
               "--grace-seconds", str(p.grace_seconds), p.script, *p.script_args]
        env = {**os.environ, contract.ENV_CONTROL_DIR: control, contract.ENV_FAULTS_DIR: self.faults_dir,
               contract.ENV_CHECKPOINT_KEEP: _KEEP_EVERYTHING}
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.current = _Attempt(proc, control, log_path)
        return self.current

    def fault_file(self, name: str, content: str | None) -> None:
        path = os.path.join(self.faults_dir, name)
        if content is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            with open(path, "w") as f:
                f.write(content)


def _wait(predicate: Callable[[], bool], attempt: _Attempt, timeout: float) -> bool:
    """Poll until predicate() or the attempt exits or timeout; True if the predicate held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if attempt.proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def _partial_step(run_dir: str) -> int | None:
    """A step folder with files but no manifest yet: a save between its files and its commit."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return None
    for step in layout.steps_in_listing(names):
        d = os.path.join(run_dir, contract.step_dir_name(step))
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        if entries and contract.MANIFEST_NAME not in entries and not any(e.endswith(".tmp") for e in entries):
            return step
    return None


def _inject(runner: _Runner, attempt: _Attempt, rec: FaultRecord, run_dir: str, rng: random.Random) -> bool:
    """Do the fault to a running attempt; True when the attempt must end (and be restarted)."""
    p, kind = runner.plan, rec.fault.kind
    rec.injected_at = attempt.progress()
    if kind == "sigterm":
        attempt.proc.send_signal(signal.SIGTERM)
        rec.detail = f"SIGTERM, grace {p.grace_seconds:g}s"
        return True
    if kind == "corrupt-checkpoint":
        attempt.proc.send_signal(signal.SIGTERM)
        return True  # the damage is done once it has stopped: see _after_exit
    if kind == "kill-worker":
        workers = attempt.workers()
        if not workers:
            rec.detail = "no worker found"
            return False
        rank = rng.choice(sorted(workers))
        _signal(workers[rank], signal.SIGKILL)
        rec.detail = f"SIGKILL rank {rank}"
        return True
    if kind == "kill-during-upload":
        runner.fault_file(contract.FAULT_SLOW_COMMIT, _SLOW_COMMIT_S)
        found: list[int] = []
        seen = set(committed_steps(run_dir))

        def uploading() -> bool:
            s = _partial_step(run_dir)
            if s is not None and s not in seen:
                found.append(s)
                return True
            return False

        hit = _wait(uploading, attempt, timeout=p.grace_seconds + 60)
        runner.fault_file(contract.FAULT_SLOW_COMMIT, None)
        if not hit:
            rec.detail = "no upload started before the run ended"
            return False
        rec.injected_at = attempt.progress()
        attempt.kill_all()
        rec.detail = f"SIGKILL of every process while step {found[0]} was written, before its manifest"
        return True
    if kind == "storage-outage":
        runner.fault_file(contract.FAULT_STORAGE_OUTAGE, "")
        target = rec.injected_at + p.every_steps + max(1, p.every_steps // 2)  # at least one save fails
        _wait(lambda: attempt.progress() >= target, attempt, timeout=p.timeout)
        runner.fault_file(contract.FAULT_STORAGE_OUTAGE, None)
        rec.detail = f"checkpoint writes failed from step {rec.injected_at} to {attempt.progress()}"
        return attempt.proc.poll() is not None
    raise AssertionError(kind)


def _after_exit(runner: _Runner, rec: FaultRecord, attempt: _Attempt, run_dir: str) -> None:
    log = contract.parse_runtime_log(attempt.log_lines())
    rec.stop_step = log["preempted_at"] if rec.fault.kind in ("sigterm", "corrupt-checkpoint") else None
    if rec.fault.kind == "corrupt-checkpoint":
        good = committed_steps(run_dir)
        if good:
            name = corrupt_step(run_dir, good[0])
            rec.detail = f"SIGTERM, then bytes of step {good[0]}'s {name} flipped"
            runner.corrupted.add(good[0])
    good = committed_steps(run_dir)
    rec.expected_resume = good[0] if good else 0


def run_chaos(plan: ChaosPlan, echo: Callable[[str], None] = print) -> ChaosReport:
    """Both runs, the faults and the checks. Ctrl-C (or any error) leaves no training process behind."""
    workdir = plan.workdir or tempfile.mkdtemp(prefix="kubetrain-chaos-")
    os.makedirs(workdir, exist_ok=True)
    runner = _Runner(plan, workdir, echo)
    try:
        return _run_both(plan, runner, workdir, echo)
    finally:
        if runner.current is not None and runner.current.proc.poll() is None:
            runner.current.kill_all()
            runner.current.exit_code(timeout=30)


def _run_both(plan: ChaosPlan, runner: _Runner, workdir: str, echo: Callable[[str], None]) -> ChaosReport:
    deadline = time.monotonic() + plan.timeout

    echo(f"reference run (no faults): {plan.script} on {plan.nproc} rank(s); logs in {workdir}")
    t0 = time.monotonic()
    ref = runner.start("reference")
    rc = ref.exit_code(timeout=max(1.0, deadline - time.monotonic()))
    ref_seconds = time.monotonic() - t0
    if rc != 0:
        raise UsageError(f"the run without faults exited {rc} ({contract.describe_exit_code(rc)}); "
                         f"fix that first (log: {ref.log_path})")
    ref_dir = runner.run_dir("reference")
    ref_steps = committed_steps(ref_dir)
    if not ref_steps:
        raise UsageError("the run without faults committed no checkpoint: does the script use "
                         "trainer.Checkpointer and call step_end()/close()?")
    total = ref_steps[0]
    rng = random.Random(plan.seed)
    faults = plan_faults(plan.faults, plan.kinds, total, plan.every_steps, rng)
    echo(f"reference: {total} steps in {ref_seconds:.1f}s; faults (seed {plan.seed}): "
         + ", ".join(f"{f.kind}@{f.at_step}" for f in faults))

    run_dir = runner.run_dir("chaos")
    records = [FaultRecord(f) for f in faults]
    pending = list(records)
    restarts_left = len(faults) + 3  # every fault may restart once, plus a retryable surprise or three
    attempt = runner.start("chaos")
    while True:
        hit: FaultRecord | None = None
        if pending:
            rec = pending[0]
            if _wait(lambda: attempt.progress() >= rec.fault.at_step, attempt,
                     timeout=max(1.0, deadline - time.monotonic())):
                pending.pop(0)
                echo(f"  fault {records.index(rec) + 1}: {rec.fault.kind} at step {attempt.progress()}")
                if not _inject(runner, attempt, rec, run_dir, rng):
                    continue  # ridden out (or nothing to hit): the same attempt meets the next fault
                hit = rec
        rc = attempt.exit_code(timeout=max(1.0, deadline - time.monotonic()))
        if hit is None:
            if rc == 0:
                break
            # An exit nobody injected (a failure of its own, or a fault that took effect late).
            hit = FaultRecord(Fault("unplanned exit", attempt.progress()), injected_at=attempt.progress())
            records.append(hit)
        hit.exit_code = rc
        if rc == 0:  # the fault landed after the last step: nothing to restart
            hit.detail += "; too late: the run had finished"
            break
        _after_exit(runner, hit, attempt, run_dir)
        if not contract.is_retryable(rc) or restarts_left == 0 or time.monotonic() > deadline:
            break
        restarts_left -= 1
        echo(f"    exit {rc} ({contract.describe_exit_code(rc)}); restarting as the operator would")
        attempt = runner.start("chaos")
        hit.resumed_from = _resumed_after_start(attempt)
    final_rc = rc
    for r in records:  # a fault planned after the run ended never happened
        if r.injected_at is None and not r.detail:
            r.detail = "not injected: the run ended first"
    checks = _checks(plan, ref_dir, run_dir, total, final_rc, records, runner.corrupted)
    return ChaosReport(plan, total, ref_seconds, records, checks, workdir)


def _resumed_after_start(attempt: _Attempt) -> int | None:
    """The step the new attempt resumed from, once its log says (or 0 for a fresh start)."""
    def said() -> bool:
        lines = attempt.log_lines()
        return contract.parse_runtime_log(lines)["resumed_from"] is not None or any(
            "no usable checkpoint" in line or "starting from step 0" in line for line in lines)

    _wait(said, attempt, timeout=300)
    resumed = contract.parse_runtime_log(attempt.log_lines())["resumed_from"]
    return 0 if resumed is None else resumed


def _checks(plan: ChaosPlan, ref_dir: str, run_dir: str, total: int, final_rc: int | None,
            records: list[FaultRecord], corrupted: set[int]) -> list[Check]:
    checks = [Check("completed", final_rc == 0,
                    "exit 0" if final_rc == 0 else f"exit {final_rc} ({contract.describe_exit_code(final_rc or 0)})")]
    good = committed_steps(run_dir)
    final = good[0] if good else None
    checks.append(Check("final step", final == total, f"{final} (reference {total})"))

    common = sorted((set(committed_steps(ref_dir)) & set(good)) - corrupted)
    checks.append(_identical_state(plan, ref_dir, run_dir, common, records))

    bad_resume = [f"fault {i + 1}: resumed from {r.resumed_from}, newest intact committed step was {r.expected_resume}"
                  for i, r in enumerate(records) if r.resumed_from is not None and r.resumed_from != r.expected_resume]
    checks.append(Check("valid resume", not bad_resume, "; ".join(bad_resume) or
                        "every restart resumed from the newest intact committed checkpoint"))
    bad_exit = [f"fault {i + 1} ({r.fault.kind}): exit {r.exit_code} ({contract.describe_exit_code(r.exit_code)})"
                for i, r in enumerate(records) if r.exit_code and not contract.is_retryable(r.exit_code)]
    checks.append(Check("retryable exits", not bad_exit, "; ".join(bad_exit) or "every fault exited retryably"))
    bad_term = [f"fault {i + 1}: exit {r.exit_code}, stop step {r.stop_step}, resumed from {r.resumed_from}"
                for i, r in enumerate(records) if r.fault.kind == "sigterm" and r.exit_code
                and (r.exit_code != int(contract.ExitCode.PREEMPTED) or r.stop_step is None
                     or r.resumed_from != r.stop_step)]
    checks.append(Check("sigterm", not bad_term, "; ".join(bad_term) or
                        "every preemption committed its stop step and redid nothing"))
    injected = sum(r.injected_at is not None for r in records)
    checks.append(Check("faults injected", injected > 0, f"{injected} of {len(records)}"))
    return checks


def _identical_state(plan: ChaosPlan, ref_dir: str, run_dir: str, common: list[int],
                     records: list[FaultRecord]) -> Check:
    """Compare every common checkpoint; pin the first difference on the fault before it.

    Checkpoints the faulted run committed before its first fault are a second
    fault-free run: what differs there is the script's own non-determinism (say,
    Python's `random`, never seeded), not a resume bug. Such RNG streams are left
    out of the comparison and named; any other difference there fails the check
    with the advice to pass --tolerance.
    """
    how = "bit-identical" if plan.tolerance is None else f"within {plan.tolerance:g}"
    if not common:
        return Check("identical state", False, "no checkpoint of the same step in both runs to compare")
    first_fault = min((r.injected_at for r in records if r.injected_at is not None), default=None)
    noisy: set[str] = set()
    for step in common:
        diffs = {k: v for k, v in diff_steps(ref_dir, run_dir, step, plan.tolerance).items()
                 if _stream(k) not in noisy}
        if first_fault is not None and step < first_fault:
            rng_only = {k for k in diffs if k.split(":", 1)[-1].startswith("rng.")}
            noisy |= {_stream(k) for k in rng_only}
            other = sorted(set(diffs) - rng_only)
            if other:
                return Check("identical state", False, f"step {step} differs before any fault was injected, so the "
                             f"script is not deterministic: {other[0]}: {diffs[other[0]]}; pass --tolerance")
            continue
        if diffs:
            key = sorted(diffs)[0]
            culprit = next((i for i, r in reversed(list(enumerate(records)))
                            if r.resumed_from is not None and r.resumed_from < step), None)
            after = (f" after fault {culprit + 1} ({records[culprit].fault.kind} at step "
                     f"{records[culprit].injected_at}, resumed from {records[culprit].resumed_from})"
                     if culprit is not None else "")
            return Check("identical state", False, f"step {step} differs from the uninterrupted run{after}: "
                         f"{key}: {diffs[key]}" + (f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""))
    skipped = f"; not compared, they differ without faults too: {', '.join(sorted(noisy))}" if noisy else ""
    return Check("identical state", True, f"{how} at {len(common)} common checkpoints{skipped}")


def format_report(r: ChaosReport) -> str:
    rows = [f"{'#':>2}  {'fault':<19} {'at step':>7} {'exit':>5} {'resumed':>8} {'expected':>8} {'redone':>6}  what"]
    dash = "-"
    for i, rec in enumerate(r.records, 1):
        rows.append(f"{i:>2}  {rec.fault.kind:<19} {rec.injected_at if rec.injected_at is not None else dash:>7} "
                    f"{rec.exit_code if rec.exit_code is not None else dash:>5} "
                    f"{rec.resumed_from if rec.resumed_from is not None else dash:>8} "
                    f"{rec.expected_resume if rec.expected_resume is not None else dash:>8} "
                    f"{rec.redone if rec.redone is not None else dash:>6}  {rec.detail}")
    rows.append("")
    for c in r.checks:
        rows.append(f"  {'PASS' if c.ok else 'FAIL'}  {c.name:<16} {c.detail}")
    rows.append("")
    rows.append(f"{'every invariant held' if r.ok else 'FAILED'}; reproduce: {reproduce_command(r.plan)}")
    rows.append(f"checkpoints and logs: {r.workdir}")
    return "\n".join(rows)


def reproduce_command(p: ChaosPlan) -> str:
    """The `launch chaos` command line that replays this plan: same faults at the same steps."""
    import shlex

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


def report_json(r: ChaosReport) -> str:
    return json.dumps({"ok": r.ok, "reference_steps": r.reference_steps, "workdir": r.workdir,
                       "seed": r.plan.seed, "reproduce": reproduce_command(r.plan),
                       "faults": [{**dataclasses.asdict(x.fault), "injected_at": x.injected_at,
                                   "exit_code": x.exit_code, "resumed_from": x.resumed_from,
                                   "expected_resume": x.expected_resume, "redone": x.redone, "detail": x.detail}
                                  for x in r.records],
                       "checks": [dataclasses.asdict(c) for c in r.checks]}, indent=2)
