"""Runs the check: the reference run, the faulted run with its restarts, and what they left on disk.

It records (record.py) and never judges: the verdict is oracle.verdict of what was recorded.
Ctrl-C, SIGTERM (turned into KeyboardInterrupt by the CLI) or any error leaves no training
process behind.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

from kubetrain_chaos import checkpoints, compare, oracle, report
from kubetrain_chaos.run_start import RunStart, send, wait_for
from kubetrain_chaos.plan import (ENDING_KINDS, IN_PLACE_KINDS, ChaosPlan, Fault, estimate_seconds, in_place_budget,
                                  plan_faults)
from kubetrain_chaos.record import FaultRecord, RunRecord
from trainer import contract
from trainer.errors import UsageError

_KEEP_EVERYTHING = "1000000"  # both runs keep every step, so they can be compared step by step
EVENTS_NAME = "events.json"

Echo = Callable[[str], None]


class _Runner:
    def __init__(self, plan: ChaosPlan, workdir: str) -> None:
        self.plan, self.workdir = plan, workdir
        self.ckpt = os.path.join(workdir, "checkpoints")
        self.faults_dir = os.path.join(workdir, "faults")
        os.makedirs(self.faults_dir, exist_ok=True)
        self.n = 0
        self.current: RunStart | None = None

    def run_dir(self, run_id: str) -> str:
        return os.path.join(self.ckpt, run_id)

    def start(self, run_id: str, fault: Fault | None = None, in_place: int = 0) -> RunStart:
        """Start an attempt; `fault`: the planned fault that is to end it, which sets its cadence and
        --keep, and arms a kill-during-upload's kill point (contract.FAULT_KILL_AT) before it starts;
        `in_place`: its supervisor's --in-place-restarts."""
        self.n += 1
        control = os.path.join(self.workdir, f"control-{self.n}")
        log_path = os.path.join(self.workdir, f"{run_id}-{self.n}.log")
        p = self.plan
        every = fault.every_steps if fault is not None and fault.every_steps else p.every_steps
        keep = str(fault.keep) if fault is not None and fault.keep else _KEEP_EVERYTHING
        armed = fault is not None and fault.phase is not None and fault.commit_step is not None
        self.fault_file(contract.FAULT_KILL_AT, f"{fault.phase} {fault.commit_step}\n" if armed else None)
        cmd = [sys.executable, "-m", "trainer", "run", "--nproc-per-node", str(p.nproc), "--checkpoint", self.ckpt,
               "--run-id", run_id, "--checkpoint-every-steps", str(every),
               "--grace-seconds", str(p.grace_seconds), "--in-place-restarts", str(in_place), p.script,
               *p.script_args]
        env = {**os.environ, contract.ENV_CONTROL_DIR: control, contract.ENV_FAULTS_DIR: self.faults_dir,
               contract.ENV_CHECKPOINT_KEEP: keep}
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.current = RunStart(proc, control, log_path, in_place_left=in_place)
        return self.current

    def fault_file(self, name: str, content: str | None) -> None:
        path = os.path.join(self.faults_dir, name)
        if content is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            with open(path, "w") as f:
                f.write(content)


def run_chaos(plan: ChaosPlan, echo: Echo = print) -> report.ChaosReport:
    """Both runs, the faults and the verdict."""
    workdir = plan.workdir or tempfile.mkdtemp(prefix="kubetrain-chaos-")
    os.makedirs(workdir, exist_ok=True)
    runner = _Runner(plan, workdir)
    try:
        rec = _run_both(plan, runner, workdir, echo)
    finally:
        if runner.current is not None and runner.current.proc.poll() is None:
            runner.current.kill_all()
            runner.current.exit_code(timeout=30)
    with open(os.path.join(workdir, EVENTS_NAME), "w") as f:
        f.write(rec.to_json())
    return report.ChaosReport(plan, rec, oracle.verdict(rec), report.ledger_summary(runner.run_dir("chaos")))


def run_repeated(plan: ChaosPlan, times: int, echo: Echo = print) -> list[report.ChaosReport]:
    """The same plan (same seed: the same faults at the same steps) `times` times, each in a folder of its own."""
    if times < 1:
        raise UsageError(f"--repeat must be >= 1, got {times}")
    if times == 1:
        return [run_chaos(plan, echo)]
    base = plan.workdir or tempfile.mkdtemp(prefix="kubetrain-chaos-")
    out = []
    for i in range(1, times + 1):
        echo(f"repeat {i} of {times} (seed {plan.seed})")
        one = dataclasses.replace(plan, workdir=os.path.join(base, f"repeat-{i}"))
        out.append(run_chaos(one, echo))
    return out


def _run_both(plan: ChaosPlan, runner: _Runner, workdir: str, echo: Echo) -> RunRecord:
    deadline = time.monotonic() + plan.timeout

    echo(f"reference run (no faults): {plan.script} on {plan.nproc} rank(s); logs in {workdir}")
    t0 = time.monotonic()
    ref = runner.start("reference")
    wait_for(lambda: ref.progress() >= 1, ref, timeout=max(1.0, deadline - time.monotonic()))
    startup_seconds = time.monotonic() - t0  # to its first step: what every restart costs again
    rc = ref.exit_code(timeout=max(1.0, deadline - time.monotonic()))
    ref_seconds = time.monotonic() - t0
    if rc != 0:
        raise UsageError(f"the run without faults exited {rc} ({contract.describe_exit_code(rc)}); "
                         f"fix that first (log: {ref.log_path})")
    ref_dir = runner.run_dir("reference")
    total = checkpoints.latest(ref_dir)
    if total is None:
        raise UsageError("the run without faults committed no checkpoint: does the script use "
                         "trainer.Checkpointer and call step_end()/close()?")
    rng = random.Random(plan.seed)
    faults = plan_faults(plan.faults, plan.kinds, total, plan.every_steps, rng, epoch_steps=plan.epoch_steps,
                         thorough=plan.thorough)
    estimate = estimate_seconds(faults, total, ref_seconds, startup_seconds, plan.grace_seconds)
    echo(f"reference: {total} steps in {ref_seconds:.1f}s; {len(faults)} faults (seed {plan.seed}"
         f"{', thorough' if plan.thorough else ''}), about {estimate:.0f}s more: "
         + ", ".join(f"{f.kind}@{f.at_step}" + (f"->{f.resume_at}" if f.resume_at is not None else "")
                     for f in faults))

    run_dir = runner.run_dir("chaos")
    records = [FaultRecord(f.kind, number=i, at_step=f.at_step, planned_resume=f.resume_at, kill_phase=f.phase)
               for i, f in enumerate(faults, 1)]
    planned = {r.number: f for r, f in zip(records, faults)}
    pending = list(records)

    def start_attempt() -> RunStart:
        """The next attempt: the planned fault that is to end it sets its cadence; the plan its in-place budget."""
        enders = [planned[r.number] for r in pending if r.kind in ENDING_KINDS]
        first = enders[0] if enders else None
        every = first.every_steps if first is not None and first.every_steps else plan.every_steps
        tail = plan.every_steps if any(r.kind == "storage-outage" for r in pending) else None
        budget = in_place_budget(enders, every, first.keep if first else None, tail) if plan.in_place else 0
        return runner.start("chaos", first, in_place=budget)

    def due(rec: FaultRecord) -> bool:
        # A targeted fault waits for its resume step to be committed (the attempt's one checkpoint
        # before it), so the restart resumes from exactly that step however late the poll comes.
        target = planned[rec.number].resume_at
        if attempt.progress() < (rec.at_step or 0):
            return False
        return target is None or planned[rec.number].commit_step is not None or \
            (checkpoints.latest(run_dir) or 0) >= target

    compared = compare.StepComparisons(ref_dir, run_dir, plan.tolerance)
    restarts_left = len(faults) + 3  # every fault may restart once, plus a retryable surprise or three
    attempt = start_attempt()
    while True:
        hit: FaultRecord | None = None
        if pending:
            rec = pending[0]
            armed = planned[rec.number].commit_step is not None  # its attempt kills itself at a commit phase
            if wait_for(lambda: due(rec), attempt, timeout=max(1.0, deadline - time.monotonic())) or \
                    (armed and attempt.proc.poll() is not None):
                pending.pop(0)
                ends = _inject(runner, attempt, rec, run_dir, rng)
                if rec.injected_at is not None:
                    echo(f"  {rec.label}: {rec.kind} at step {rec.injected_at}")
                if not ends:
                    continue  # ridden out (or nothing to hit): the same attempt meets the next fault
                hit = rec
                code = _restarted_in_place(attempt, deadline) if rec.kind in IN_PLACE_KINDS else None
                if code is not None:  # the same supervisor started its ranks again: no exit to wait for
                    rec.exit_code, rec.in_place = code, True
                    rec.detail += "; recovered in place"
                    compared.update(_damaged(records))
                    _after_exit(rec, attempt, run_dir)
                    restarts_left -= 1
                    echo(f"    exit {code} ({contract.describe_exit_code(code)}); restarted in place by the runtime")
                    rec.resumed_from, rec.resume_logged = _resumed_after_start(attempt)
                    continue
        rc = attempt.exit_code(timeout=max(1.0, deadline - time.monotonic()))
        if hit is None:
            if rc == 0:
                break
            # An exit nobody injected (a failure of its own, or a fault that took effect late).
            hit = FaultRecord("unplanned exit", injected_at=attempt.progress(), detail="exit without a fault")
            records.append(hit)
            echo(f"  {hit.label}: exit {rc}")
        hit.exit_code = rc
        if rc == 0:  # the fault landed after the last step: nothing to restart
            hit.detail += "; too late: the run had finished"
            break
        compared.update(_damaged(records))  # before _after_exit may corrupt a step on purpose
        _after_exit(hit, attempt, run_dir)
        if not contract.is_retryable(rc) or restarts_left == 0 or time.monotonic() > deadline:
            break
        restarts_left -= 1
        echo(f"    exit {rc} ({contract.describe_exit_code(rc)}); restarting as the operator would")
        attempt = start_attempt()
        hit.resumed_from, hit.resume_logged = _resumed_after_start(attempt)
    for r in records:  # a fault planned after the run ended never happened
        if r.injected_at is None and not r.detail:
            r.detail = "not injected: the run ended first"
    ref_steps, run_steps = checkpoints.intact_steps(ref_dir), checkpoints.intact_steps(run_dir)
    compared.update(_damaged(records))
    comparisons = compared.result(_damaged(records))
    runner.fault_file(contract.FAULT_KILL_AT, None)
    return RunRecord(seed=plan.seed, tolerance=plan.tolerance, reference_steps=total, reference_seconds=ref_seconds,
                     epoch_steps=plan.epoch_steps, thorough=plan.thorough, faults_asked=len(faults),
                     reference_committed=ref_steps, faults=records, final_code=rc,
                     final_latest=checkpoints.latest(run_dir), run_committed=run_steps, comparisons=comparisons,
                     workdir=workdir)


def _inject(runner: _Runner, attempt: RunStart, rec: FaultRecord, run_dir: str, rng: random.Random) -> bool:
    """Do the fault to a running attempt; True when the attempt must end (and be restarted)."""
    p, kind = runner.plan, rec.kind
    rec.injected_at = attempt.progress()
    if kind == "sigterm":
        attempt.proc.send_signal(signal.SIGTERM)
        rec.detail = f"SIGTERM, grace {p.grace_seconds:g}s"
        return True
    if kind == "corrupt-checkpoint":
        attempt.proc.send_signal(signal.SIGTERM)
        rec.detail = "SIGTERM"
        return True  # the damage is done once it has stopped: see _after_exit
    if kind in ("kill-worker", "kill-loader-worker"):
        ranks = attempt.ranks()
        if not ranks:
            rec.injected_at, rec.detail = None, "no rank was running"
            return False
        rank = rng.choice(sorted(ranks))
        if kind == "kill-worker":
            send(ranks[rank], signal.SIGKILL)
            rec.detail = f"SIGKILL of rank {rank} (pid {ranks[rank]})"
            return True
        loaders: list[int] = []
        wait_for(lambda: bool(loaders.extend(attempt.loader_workers(ranks[rank])) or loaders), attempt, timeout=5)
        if not loaders:
            rec.injected_at, rec.detail = None, f"rank {rank} has no DataLoader worker process (num_workers=0?)"
            return False
        send(loaders[0], signal.SIGKILL)
        rec.detail = f"SIGKILL of a DataLoader worker (pid {loaders[0]}) of rank {rank}"
        return True
    if kind == "kill-during-upload":
        # Armed when the attempt started (runner.start): rank 0 SIGKILLs itself when the commit of the
        # step reaches the phase; the supervisor then ends the others, as a node loss would.
        fault_step, phase = rec.at_step, rec.kill_phase
        try:
            attempt.proc.wait(timeout=p.grace_seconds + 120)
        except subprocess.TimeoutExpired:
            pass
        runner.fault_file(contract.FAULT_KILL_AT, None)
        if attempt.proc.poll() in (None, 0):  # still training, or it finished: the commit never got there
            rec.injected_at, rec.detail = None, f"the commit of step {fault_step} never reached phase {phase}"
            return False
        rec.injected_at, rec.writing = attempt.progress(), fault_step
        rec.detail = f"SIGKILL of rank 0 at phase {phase} of step {fault_step}'s commit"
        return True
    if kind == "storage-outage":
        runner.fault_file(contract.FAULT_STORAGE_OUTAGE, "")
        target = rec.injected_at + p.every_steps + max(1, p.every_steps // 2)  # at least one save fails
        wait_for(lambda: attempt.progress() >= target, attempt, timeout=p.timeout)
        runner.fault_file(contract.FAULT_STORAGE_OUTAGE, None)
        rec.detail = f"checkpoint writes failed from step {rec.injected_at} to {attempt.progress()}"
        return attempt.proc.poll() is not None
    raise AssertionError(kind)


def _restarted_in_place(attempt: RunStart, deadline: float) -> int | None:
    """After a kill: the exit code of the attempt it ended, once the supervisor logged an in-place restart
    (from then on `attempt` reads the new attempt's log lines); None when it exits instead."""
    if attempt.in_place_left <= 0:
        return None
    seen = attempt.in_place_seen
    wait_for(lambda: attempt.in_place_restarts()[0] > seen, attempt, timeout=max(1.0, deadline - time.monotonic()))
    count, after = attempt.in_place_restarts()
    if count <= seen:
        return None
    attempt.in_place_seen, attempt.in_place_left, attempt.log_from = count, attempt.in_place_left - 1, after
    return contract.parse_runtime_log(attempt.log_lines()[after - 1:after])["in_place_after"]


def _damaged(records: list[FaultRecord]) -> set[int]:
    """Steps a fault corrupted on purpose: what differs there is the fault, not the resume."""
    return {r.corrupted for r in records if r.corrupted is not None}


def _after_exit(rec: FaultRecord, attempt: RunStart, run_dir: str) -> None:
    """Record the run folder as the ended attempt left it (every process gone), before the restart."""
    rec.stop_step = attempt.logged()["preempted_at"] if rec.kind in ("sigterm", "corrupt-checkpoint") else None
    if rec.kind == "corrupt-checkpoint":
        committed = checkpoints.latest(run_dir)
        if committed is not None and checkpoints.intact(run_dir, committed):
            name = checkpoints.corrupt_step(run_dir, committed)
            rec.corrupted = committed
            rec.detail = f"SIGTERM, then bytes of step {committed}'s {name} flipped"
    if rec.writing is not None:
        rec.phase = checkpoints.commit_phase(run_dir, rec.writing)
        rec.latest_tmp = checkpoints.latest_tmp(run_dir)
    rec.latest_after = checkpoints.latest(run_dir)
    rec.intact_after = checkpoints.intact_steps(run_dir)


def _resumed_after_start(attempt: RunStart) -> tuple[int | None, bool]:
    """(step, logged) once the new attempt resumed: its LOG_RESUMED line, or (0, False) once its ranks
    trained past step 0 without one (a fresh start, or a script that never restores). (None, False):
    it ended before either."""
    resumed = lambda: attempt.logged()["resumed_from"]  # noqa: E731
    # restore() logs the line before its heartbeat moves past 0, so a step > 0 with no line is no resume.
    wait_for(lambda: resumed() is not None or attempt.progress() > 0, attempt, timeout=600)
    step = resumed()
    if step is not None:
        return step, True
    return (0, False) if attempt.progress() > 0 else (None, False)
