"""What a check prints: the fault table (rows in step order), the verdict, the restart ledger's
table as `launch status` shows it, and for --repeat whether the verdicts agree."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

from kubetrain_chaos import coverage, oracle, record
from kubetrain_chaos.oracle import Check
from kubetrain_chaos.plan import ChaosPlan, reproduce_command
from kubetrain_chaos.record import FaultRecord, RunRecord
from trainer import contract


@dataclasses.dataclass
class ChaosReport:
    plan: ChaosPlan
    record: RunRecord
    checks: list[Check]
    #: The faulted run's restart ledger, summarized (None: no ledger); the launcher renders its table.
    ledger: contract.LedgerSummary | None = None

    @property
    def ok(self) -> bool:
        return oracle.ok(self.checks)

    @property
    def records(self) -> list[FaultRecord]:
        return self.record.rows()

    @property
    def reference_steps(self) -> int:
        return self.record.reference_steps

    @property
    def workdir(self) -> str:
        return self.record.workdir

    def summary(self) -> str:
        return format_report(self)


def what(rec: FaultRecord) -> str:
    """The table's words for a fault: what was done and, for a kill during a commit, how far the
    commit had got, from the run folder the kill left (never assumed)."""
    if rec.writing is None or rec.phase is None:
        return rec.detail
    s, before = rec.writing, rec.latest_after
    named = f"`latest` still named {before}" if before is not None else "no `latest` yet"
    where = {record.PHASE_FILES: f"while step {s} was written, before its manifest",
             record.PHASE_MANIFEST: f"after step {s}'s manifest, before `latest` was replaced ({named}: "
                                    f"step {s} not committed)",
             record.PHASE_LATEST: f"after step {s}'s manifest, while `latest` was being replaced ({named}; a "
                                  f"latest.tmp held {s}: step {s} not committed)",
             record.PHASE_COMMITTED: f"after step {s} was committed (`latest` named it)"}[rec.phase]
    return f"{rec.detail} {where}"


#: Renders a ledger summary as `launch status` does (launcher/status/ledger.lines): the launcher passes it in.
LedgerLines = Callable[[contract.LedgerSummary], list[str]]


def _ledger_block(summary: contract.LedgerSummary, ledger_lines: LedgerLines | None) -> list[str]:
    if ledger_lines is not None:
        return ["", "restart ledger of the faulted run (as `launch status` shows it):"] + ledger_lines(summary)
    goodput = f"{summary.goodput:.0%}" if summary.goodput is not None else "-"
    return ["", f"restart ledger of the faulted run: {summary.attempts} start(s), goodput {goodput} "
                "(`launch chaos --local` shows its table)"]


def format_report(r: ChaosReport, ledger_lines: LedgerLines | None = None) -> str:
    dash = "-"

    def cell(v: object) -> object:
        return dash if v is None else v

    rows = [f"{'#':>2}  {'fault':<19} {'at step':>7} {'exit':>5} {'resumed':>8} {'expected':>8} {'redone':>6}  what"]
    for rec in r.records:
        expected = oracle.expected_resume(rec) if rec.resumed_from is not None else None
        rows.append(f"{cell(rec.number):>2}  {rec.kind:<19} {cell(rec.injected_at):>7} {cell(rec.exit_code):>5} "
                    f"{cell(rec.resumed_from):>8} {cell(expected):>8} {cell(rec.redone):>6}  {what(rec)}")
    rows.append("")
    for c in r.checks:
        rows.append(f"  {'PASS' if c.ok else 'FAIL'}  {c.name:<16} {c.detail}")
    cov, short = covered(r.record)
    rows.append(f"  {'LESS' if short else 'DONE'}  {'covered':<16} {coverage.words(cov)}")
    if short:
        rows.append(f"  {'':4}  {'':<16} less than the plan aims for: {'; '.join(short)}")
    if r.ledger is not None:
        rows += _ledger_block(r.ledger, ledger_lines)
    rows.append("")
    held = "every invariant held" + (", covering less than the plan aims for (see covered)" if short else "")
    rows.append(f"{held if r.ok else 'FAILED'}; reproduce: {reproduce_command(r.plan)}")
    rows.append(f"checkpoints, logs and the recorded events: {r.workdir}")
    return "\n".join(rows)


def covered(run: RunRecord) -> tuple[coverage.Coverage, list[str]]:
    """What the run's restarts covered (every restart counts, planned or not), and what it fell short
    of the plan's aim by, with why when the run had room for fewer faults than asked."""
    cov = coverage.of([x.resumed_from for x in run.faults if x.resumed_from is not None], run.epoch_steps)
    short = coverage.shortfall(cov, coverage.goal(run.thorough, run.epoch_steps))
    missed = [x.label for x in run.faults if x.number is not None and x.injected_at is None]
    if short and missed:
        short.append(f"not injected: {', '.join(missed)}")
    if short and run.reference_steps < 120:
        short.append(f"a run of {run.reference_steps} steps is short for the plan")
    return cov, short


def report_json(r: ChaosReport) -> str:
    return json.dumps(_doc(r), indent=2)


def _doc(r: ChaosReport) -> dict:
    return {"ok": r.ok, "reference_steps": r.reference_steps, "workdir": r.workdir, "seed": r.plan.seed,
            "reproduce": reproduce_command(r.plan),
            "faults": [{"number": x.number, "kind": x.kind, "at_step": x.at_step, "injected_at": x.injected_at,
                        "exit_code": x.exit_code, "resumed_from": x.resumed_from,
                        "expected_resume": oracle.expected_resume(x) if x.resumed_from is not None else None,
                        "redone": x.redone, "phase": x.phase, "detail": what(x)} for x in r.records],
            "checks": [dataclasses.asdict(c) for c in r.checks],
            "covered": _covered_doc(r.record)}


def _covered_doc(run: RunRecord) -> dict:
    cov, short = covered(run)
    return {"resumes": list(cov.resumes), "residues": {str(p): list(hit) for p, hit in cov.residues},
            "epoch_steps": cov.epoch_steps, "epoch_first": cov.epoch_first, "epoch_last": cov.epoch_last,
            "less_than_planned": short, "words": coverage.words(cov)}


def ledger_summary(run_dir: str) -> contract.LedgerSummary | None:
    """The restart ledger of a local run folder, summarized; None when it has no ledger."""
    folder = os.path.join(run_dir, contract.ATTEMPTS_DIR)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    objects = {}
    for name in names:
        try:
            with open(os.path.join(folder, name), "rb") as f:
                objects[name] = f.read()
        except OSError:
            objects[name] = None
    attempts = contract.parse_ledger(objects)
    if not attempts:
        return None
    return contract.summarize_ledger(attempts, time.time())


def verdict_key(r: ChaosReport) -> tuple:
    """What must agree between repeats of one plan: the faults drawn and each check's outcome."""
    return (tuple((x.number, x.kind, x.at_step) for x in r.records if x.number is not None),
            tuple((c.name, c.ok) for c in r.checks))


def disagreements(reports: list[ChaosReport]) -> list[str]:
    """One line per repeat whose verdict differs from the first's; empty when they all agree."""
    if not reports:
        return []
    first = verdict_key(reports[0])
    out = []
    for i, r in enumerate(reports[1:], 2):
        key = verdict_key(r)
        if key == first:
            continue
        if key[0] != first[0]:
            out.append(f"repeat {i} drew other faults than repeat 1 (the reference ended at another step?)")
            continue
        flips = [f"{name} {'PASS' if ok else 'FAIL'} (repeat 1: {'PASS' if was else 'FAIL'})"
                 for (name, ok), (_, was) in zip(key[1], first[1]) if ok != was]
        out.append(f"repeat {i} disagrees with repeat 1: " + "; ".join(flips))
    return out


def format_repeats(reports: list[ChaosReport], ledger_lines: LedgerLines | None = None) -> str:
    """Each repeat's report, then one line: the verdicts agree, or where they do not."""
    parts = [f"=== repeat {i} of {len(reports)} ===\n{format_report(r, ledger_lines)}"
             for i, r in enumerate(reports, 1)]
    bad = disagreements(reports)
    verdicts = ", ".join("PASS" if r.ok else "FAIL" for r in reports)
    parts.append(f"{len(reports)} repeats of seed {reports[0].plan.seed}: {verdicts}; " +
                 ("the verdicts agree" if not bad else "THE VERDICTS DISAGREE: " + "; ".join(bad)))
    return "\n\n".join(parts)


def repeats_json(reports: list[ChaosReport]) -> str:
    bad = disagreements(reports)
    return json.dumps({"ok": all(r.ok for r in reports) and not bad, "agree": not bad, "disagreements": bad,
                       "repeats": [_doc(r) for r in reports]}, indent=2)


def render(reports: list[ChaosReport], output: str, ledger_lines: LedgerLines | None = None) -> tuple[str, int]:
    """(what `launch chaos --local` prints, its exit code): 0 when every repeat held and they agree."""
    if len(reports) == 1:
        r = reports[0]
        return (report_json(r) if output == "json" else "\n" + format_report(r, ledger_lines)), (0 if r.ok else 1)
    ok = all(r.ok for r in reports) and not disagreements(reports)
    return (repeats_json(reports) if output == "json" else "\n" + format_repeats(reports, ledger_lines)), (
        0 if ok else 1)
