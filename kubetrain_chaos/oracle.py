"""The verdict: a pure function of a recorded run (record.py), the same every time it is judged.

  completed        the faulted run finished (exit 0) within its restart budget
  final step       `latest` ended at the reference's final step
  step numbering   no step-000000000: a script that calls step_end(0) after its first step
                   numbers steps from 0, and each resume then redoes one step
  valid resume     every restart resumed from the newest intact committed step at that
                   moment. A step is committed iff `latest` names it (the atomic replace of
                   `latest` is the commit point): the expected step is the one `latest` named
                   when the attempt ended, or, when that one was damaged, the newest intact
                   step before it; never a newer step whose manifest `latest` did not name yet
  identical state  every checkpoint both runs committed at the same step holds the same
                   state (bit for bit; or floating-point state within --tolerance); the first
                   difference, by what to fix first, is pinned on the fault before it
  retryable exits  every fault ended the run with a code the operator retries (>= 128)
  sigterm          a preemption committed its stop step and resumed from it
  faults injected  at least one planned fault hit the run
"""

from __future__ import annotations

import collections
import dataclasses

from kubetrain_chaos import compare
from kubetrain_chaos.record import FaultRecord, RunRecord
from trainer import contract


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def expected_resume(rec: FaultRecord) -> int:
    """The step a restart after `rec` must resume from: what `latest` named when the attempt had ended,
    if it verifies, else the newest intact step before it; 0 when nothing was committed."""
    if rec.latest_after is None:
        return 0
    return max((s for s in rec.intact_after if s <= rec.latest_after), default=0)


def verdict(run: RunRecord) -> list[Check]:
    rows = run.rows()
    return [_completed(run), _final_step(run), _step_numbering(run), _valid_resume(rows),
            _identical_state(run, rows), _retryable(rows), _sigterm(run, rows), _injected(rows)]


def ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks)


def _completed(run: RunRecord) -> Check:
    code = run.final_code
    return Check("completed", code == 0,
                 "exit 0" if code == 0 else f"exit {code} ({contract.describe_exit_code(code or 0)})")


def _final_step(run: RunRecord) -> Check:
    return Check("final step", run.final_latest == run.reference_steps,
                 f"`latest` named {run.final_latest} (reference {run.reference_steps})")


def _stray_step_zero(run: RunRecord) -> bool:
    return 0 in run.reference_committed or 0 in run.run_committed


def _step_numbering(run: RunRecord) -> Check:
    if _stray_step_zero(run):
        return Check("step numbering", False, f"{contract.step_dir_name(0)} was committed: the script calls "
                     "step_end(0) after its first step. step_end takes the number of steps done (step + 1 in a "
                     "`for step in range(start, n)` loop), else every resume redoes one step")
    return Check("step numbering", True, "steps counted from 1 (no step-000000000)")


def _valid_resume(rows: list[FaultRecord]) -> Check:
    bad = []
    for r in rows:
        if r.resumed_from is None:
            continue
        want = expected_resume(r)
        if r.resume_logged is False and want > 0:
            bad.append(f"{r.label}: the script never restored: no resumed line after {r.label}, though `latest` "
                       f"named step {r.latest_after} (does it call Checkpointer.restore()?)")
        elif r.resumed_from != want:
            why = (f"`latest` named {r.latest_after}" if want == r.latest_after else
                   f"`latest` named {r.latest_after}, which did not verify")
            bad.append(f"{r.label}: resumed from {r.resumed_from}, the newest intact committed step was {want} ({why})")
    return Check("valid resume", not bad, "; ".join(bad) or
                 "every restart resumed from the step `latest` named (or the newest intact one before it)")


def _identical_state(run: RunRecord, rows: list[FaultRecord]) -> Check:
    """Compare every common checkpoint; pin the first difference on the fault before it.

    Checkpoints the faulted run committed up to the step its first restart resumed from (all
    of them when nothing restarted) are a second fault-free run: what differs there is the
    script's own non-determinism (say, Python's `random`, never seeded), not a resume bug.
    Such RNG streams are left out of the comparison and named; any other difference there
    fails the check with the advice to pass --tolerance.
    """
    how = "bit-identical" if run.tolerance is None else f"within {run.tolerance:g}"
    steps = sorted(run.comparisons)
    if not steps:
        return Check("identical state", False, "no checkpoint of the same step in both runs to compare")
    # A restart that ended before it resumed (None) may have started anywhere: nothing is fault-free.
    fault_free_to = min(((r.resumed_from or 0) for r in rows if r.exit_code), default=max(steps))
    noisy: set[str] = set()
    for step in steps:
        diffs = {k: v for k, v in run.comparisons[step].items() if compare.stream(k) not in noisy}
        if step <= fault_free_to:
            rng_only = {k for k in diffs if k.split(":", 1)[-1].startswith("rng.")}
            noisy |= {compare.stream(k) for k in rng_only}
            other = compare.ordered({k: v for k, v in diffs.items() if k not in rng_only})
            if other:
                return Check("identical state", False, f"step {step} differs before any fault was injected, so the "
                             f"script is not deterministic: {other[0]}: {diffs[other[0]]}; pass --tolerance")
            continue
        if diffs:
            return Check("identical state", False, _first_difference(step, diffs, rows))
    skipped = f"; not compared, they differ without faults too: {', '.join(sorted(noisy))}" if noisy else ""
    return Check("identical state", True, f"{how} at {len(steps)} common checkpoints{skipped}")


def _first_difference(step: int, diffs: dict[str, str], rows: list[FaultRecord]) -> str:
    keys = compare.ordered(diffs)
    key = keys[0]
    culprit = next((r for r in reversed(rows) if r.resumed_from is not None and r.resumed_from < step), None)
    after = (f" after {culprit.label} ({culprit.kind} at step {culprit.injected_at}, resumed from "
             f"{culprit.resumed_from})" if culprit is not None else "")
    rest = collections.Counter(compare.category(k) for k in keys[1:])
    more = (f" (and {len(keys) - 1} more: " + ", ".join(f"{rest[c]} {c}" for c in compare.CATEGORIES if rest[c])
            + ")") if len(keys) > 1 else ""
    return (f"step {step} differs from the uninterrupted run{after}: {compare.category(key)}: "
            f"{key}: {diffs[key]}{more}")


def _retryable(rows: list[FaultRecord]) -> Check:
    bad = [f"{r.label} ({r.kind}): exit {r.exit_code} ({contract.describe_exit_code(r.exit_code)})"
           for r in rows if r.exit_code and not contract.is_retryable(r.exit_code)]
    return Check("retryable exits", not bad, "; ".join(bad) or "every fault exited retryably")


def _sigterm(run: RunRecord, rows: list[FaultRecord]) -> Check:
    bad = [f"{r.label}: exit {r.exit_code}, stop step {r.stop_step}, resumed from {r.resumed_from}"
           for r in rows if r.kind == "sigterm" and r.exit_code
           and (r.exit_code != int(contract.ExitCode.PREEMPTED) or r.stop_step is None
                or r.resumed_from != r.stop_step)]
    if bad:
        return Check("sigterm", False, "; ".join(bad))
    if _stray_step_zero(run):  # resumed from the stop step, yet the script redoes it: see step numbering
        return Check("sigterm", True, "every preemption committed its stop step and resumed from it (each resume "
                     "redoes one step: see step numbering)")
    return Check("sigterm", True, "every preemption committed its stop step and redid nothing")


def _injected(rows: list[FaultRecord]) -> Check:
    planned = [r for r in rows if r.number is not None]
    # A fault that came after the last step (exit 0: "too late") hit nothing.
    injected = sum(r.injected_at is not None and r.exit_code != 0 for r in planned)
    return Check("faults injected", injected > 0, f"{injected} of {len(planned)}")
