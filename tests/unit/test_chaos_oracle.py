"""The chaos verdict on recorded runs: a pure function of what was recorded, with the commit
boundary the runtime uses (a step is committed iff `latest` names it)."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil

import pytest

from kubetrain_chaos import oracle, report
from kubetrain_chaos.plan import ChaosPlan
from kubetrain_chaos.record import PHASE_COMMITTED, PHASE_FILES, PHASE_LATEST, PHASE_MANIFEST, FaultRecord, RunRecord
from tests.helpers import EXAMPLE, FIXTURES

RUNS = os.path.join(FIXTURES, "chaos-runs")


def recorded(name: str) -> RunRecord:
    with open(os.path.join(RUNS, name)) as f:
        return RunRecord.from_json(f.read())


def checks(run: RunRecord) -> dict[str, oracle.Check]:
    return {c.name: c for c in oracle.verdict(run)}


def a_run(*faults: FaultRecord, **fields) -> RunRecord:
    base = dict(seed=1, tolerance=None, reference_steps=200, reference_seconds=10.0,
                reference_committed=[20, 40, 60, 80, 100, 120, 140, 160, 180, 200], faults=list(faults),
                final_code=0, final_latest=200, run_committed=[20, 40, 60, 80, 100, 120, 140, 160, 180, 200],
                comparisons={s: {} for s in (20, 40, 60, 80, 100, 120, 140, 160, 180, 200)})
    return RunRecord(**{**base, **fields})


def test_a_recorded_passing_run_passes_and_judging_it_again_gives_the_same_verdict():
    run = recorded("example-seed1-pass.json")
    first = oracle.verdict(run)
    assert oracle.ok(first), first
    again = RunRecord.from_json(run.to_json())
    assert oracle.verdict(again) == first == oracle.verdict(copy.deepcopy(run))


def test_issue_16_seed_1_a_kill_while_latest_was_replaced_resumes_from_what_latest_named():
    # The kill landed after step 60's manifest, while `latest` (48) was being replaced: a leftover
    # latest.tmp held 60. Step 60 was not committed; restore took 48, which is right.
    run = recorded("issue16-seed1-latest-being-replaced.json")
    got = checks(run)
    assert got["valid resume"].ok, got["valid resume"]
    assert oracle.ok(list(got.values()))
    kill = next(r for r in run.rows() if r.kind == "kill-during-upload")
    assert oracle.expected_resume(kill) == 48
    words = report.what(kill)
    assert "before its manifest" not in words
    assert "after step 60's manifest, while `latest` was being replaced (`latest` still named 48" in words


def test_resuming_from_a_step_latest_did_not_name_fails():
    run = recorded("issue16-seed1-latest-being-replaced.json")
    kill = next(r for r in run.faults if r.kind == "kill-during-upload")
    kill.resumed_from = 60  # the newest step with a manifest: not committed
    got = checks(run)["valid resume"]
    assert not got.ok
    assert got.detail == "fault 2: resumed from 60, the newest intact committed step was 48 (`latest` named 48)"


@pytest.mark.parametrize("phase,latest_after,latest_tmp,intact,words", [
    (PHASE_FILES, 40, None, [20, 40], "while step 60 was written, before its manifest"),
    (PHASE_MANIFEST, 40, None, [20, 40, 60], "after step 60's manifest, before `latest` was replaced"),
    (PHASE_LATEST, 40, 60, [20, 40, 60], "after step 60's manifest, while `latest` was being replaced"),
    (PHASE_COMMITTED, 60, None, [20, 40, 60], "after step 60 was committed (`latest` named it)"),
])
def test_a_kill_at_each_phase_of_a_commit_expects_the_step_latest_named(phase, latest_after, latest_tmp, intact,
                                                                         words):
    kill = FaultRecord("kill-during-upload", number=1, at_step=60, injected_at=60, exit_code=137, writing=60,
                       phase=phase, latest_after=latest_after, latest_tmp=latest_tmp, intact_after=intact,
                       resumed_from=latest_after, resume_logged=True, detail="SIGKILL of every process")
    got = checks(a_run(kill))
    assert got["valid resume"].ok and oracle.expected_resume(kill) == latest_after
    assert report.what(kill) == f"SIGKILL of every process {words}" + (
        "" if phase in (PHASE_FILES, PHASE_COMMITTED) else
        f" (`latest` still named 40{'; a latest.tmp held 60' if latest_tmp else ''}: step 60 not committed)")


def test_a_damaged_latest_falls_back_to_the_newest_intact_step_before_it_never_to_a_newer_uncommitted_one():
    corrupt = FaultRecord("corrupt-checkpoint", number=1, at_step=60, injected_at=60, exit_code=143, stop_step=60,
                          corrupted=60, latest_after=60, intact_after=[20, 40, 70], resumed_from=40,
                          resume_logged=True)
    assert oracle.expected_resume(corrupt) == 40
    assert checks(a_run(corrupt))["valid resume"].ok
    corrupt.resumed_from = 70
    assert "resumed from 70, the newest intact committed step was 40 (`latest` named 60, which did not verify)" in \
        checks(a_run(corrupt))["valid resume"].detail


def test_a_script_that_never_restores_is_named_at_once():
    kill = FaultRecord("kill-worker", number=1, at_step=50, injected_at=52, exit_code=137, latest_after=40,
                       intact_after=[20, 40], resumed_from=0, resume_logged=False)
    got = checks(a_run(kill))["valid resume"]
    assert not got.ok
    assert got.detail.startswith("fault 1: the script never restored: no resumed line after fault 1, though "
                                 "`latest` named step 40")


def test_an_off_by_one_step_end_is_flagged_and_never_called_redid_nothing():
    stop = FaultRecord("sigterm", number=1, at_step=50, injected_at=50, exit_code=143, stop_step=52,
                       latest_after=52, intact_after=[0, 20, 40, 52], resumed_from=52, resume_logged=True)
    got = checks(a_run(stop, reference_committed=[0, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200]))
    assert not got["step numbering"].ok
    assert "step-000000000 was committed: the script calls step_end(0)" in got["step numbering"].detail
    assert "redid nothing" not in got["sigterm"].detail


def test_the_first_finding_is_what_to_fix_first_and_names_the_reference():
    kill = FaultRecord("kill-worker", number=1, at_step=50, injected_at=52, exit_code=137, latest_after=40,
                       intact_after=[20, 40], resumed_from=40, resume_logged=True)
    diffs = {"rank-00000.pt:rng.torch": "3 part(s) of its state differ from the reference",
             "state.pt:optimizer.param_groups.0.lr": "0.025 (resumed) vs 0.05 (uninterrupted reference)",
             "rank-00000.pt:state.sampler.offset": "0 (resumed) vs 224 (uninterrupted reference)"}
    run = a_run(kill, comparisons={20: {}, 40: {}, 60: diffs})
    got = checks(run)["identical state"]
    assert got.detail == ("step 60 differs from the uninterrupted run after fault 1 (kill-worker at step 52, resumed "
                          "from 40): data position: rank-00000.pt:state.sampler.offset: 0 (resumed) vs 224 "
                          "(uninterrupted reference) (and 2 more: 1 model/optimizer state, 1 RNG)")


def test_a_run_no_fault_ended_is_fault_free_its_unseeded_rng_is_noise_and_a_late_fault_hit_nothing():
    # CI, seed 46529887: the only fault that fired was a SIGTERM after the last step (exit 0), and
    # numpy's unseeded RNG differed at step 160, the one step a --keep 1 attempt left to compare.
    late = FaultRecord("sigterm", number=1, at_step=52, injected_at=160, exit_code=0,
                       detail="SIGTERM; too late: the run had finished")
    noise = {"rank-00000.pt:rng.numpy": "1 part(s) of its state differ from the reference"}
    got = checks(a_run(late, comparisons={160: noise}))
    assert got["identical state"].ok and "rng.numpy" in got["identical state"].detail, got["identical state"]
    assert not got["faults injected"].ok and got["faults injected"].detail == "0 of 1"


def test_rng_noise_is_told_apart_only_up_to_the_step_the_first_restart_resumed_from():
    kill = FaultRecord("kill-worker", number=1, at_step=50, injected_at=52, exit_code=137, resumed_from=40,
                       resume_logged=True)
    noise = {"rank-00000.pt:rng.numpy": "1 part(s) of its state differ from the reference"}
    assert checks(a_run(kill, comparisons={20: noise, 40: {}, 60: noise}))["identical state"].ok
    got = checks(a_run(kill, comparisons={20: {}, 40: {}, 60: noise}))["identical state"]
    assert not got.ok and got.detail.startswith("step 60 differs from the uninterrupted run after fault 1"), got


def test_rows_are_in_step_order_with_an_unplanned_exit_where_it_happened(tmp_path):
    planned = FaultRecord("sigterm", number=1, at_step=90, injected_at=91, exit_code=143, stop_step=92,
                          latest_after=92, intact_after=[92], resumed_from=92, resume_logged=True)
    surprise = FaultRecord("unplanned exit", injected_at=33, exit_code=201, latest_after=20, intact_after=[20],
                           resumed_from=20, resume_logged=True)
    run = a_run(planned, surprise)
    assert [r.kind for r in run.rows()] == ["unplanned exit", "sigterm"]
    plan = ChaosPlan(script=EXAMPLE, seed=1)
    text = report.format_report(report.ChaosReport(plan, run, oracle.verdict(run)))
    table = text.splitlines()[1:3]
    assert table[0].split()[:3] == ["-", "unplanned", "exit"] and table[1].split()[:3] == ["1", "sigterm", "91"]


def test_repeats_that_disagree_are_reported():
    plan = ChaosPlan(script=EXAMPLE, seed=1)
    good = recorded("example-seed1-pass.json")
    bad = recorded("example-seed1-pass.json")
    bad.faults[1].resumed_from = 40
    reports = [report.ChaosReport(plan, r, oracle.verdict(r)) for r in (good, good, bad)]
    assert report.disagreements(reports[:2]) == []
    assert report.disagreements(reports) == ["repeat 3 disagrees with repeat 1: valid resume FAIL (repeat 1: PASS)"]
    text, code = report.render(reports, "text")
    assert code == 1 and "THE VERDICTS DISAGREE" in text


def test_the_faulted_runs_ledger_is_shown_as_launch_status_shows_it(tmp_path):
    shutil.copytree(os.path.join(FIXTURES, "ledger-chaos"), tmp_path / "chaos" / "attempts")
    from launcher.status import ledger as restart_ledger

    summary = report.ledger_summary(str(tmp_path / "chaos"))
    lines = restart_ledger.lines(summary)
    assert lines and lines[0].startswith("ledger    goodput ")
    assert "STARTED" in lines[1] and "CAUSE" in lines[1]
    assert report.ledger_summary(str(tmp_path / "nothing")) is None
    plan = ChaosPlan(script=EXAMPLE, seed=1)
    run = recorded("example-seed1-pass.json")
    chaos = report.ChaosReport(plan, run, oracle.verdict(run), summary)
    text, _ = report.render([chaos], "text", restart_ledger.lines)  # as `launch chaos --local` prints it
    assert "restart ledger of the faulted run (as `launch status` shows it):\n" + lines[0] in text
    assert "restart ledger of the faulted run: " in report.format_report(chaos)  # the plugin: no launcher


def test_a_record_round_trips_through_json():
    run = recorded("issue16-seed1-latest-being-replaced.json")
    assert dataclasses.asdict(RunRecord.from_json(run.to_json())) == dataclasses.asdict(run)
