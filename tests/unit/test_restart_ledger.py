"""The restart ledger: the pure budget and summary rules on recorded ledgers (trainer.contract), and its
I/O on a local folder (trainer.ledger_io). Real torchrun runs in tests/runtime/test_crash_loop.py."""

from __future__ import annotations

import json
import os
import threading

import pytest

from trainer import contract
from trainer.contract import Attempt, ExitCode
from trainer.ledger_io import Ledger

T0 = 1_800_000_000.0


def att(i: int, *, resumed: int | None = None, code: int | None = None, committed: int | None = None,
        stopping: str | None = None, node: int = 0, committed_at: float | None = None, cause: str | None = None,
        last_step: int | None = None) -> Attempt:
    start = T0 + 100 * i
    return Attempt(name=contract.attempt_name(start, node, f"{i:08x}"), node_rank=node, started_at=start,
                   resumed_from=resumed, code=code, committed=committed, stopping=stopping, cause=cause,
                   committed_at=committed_at, last_step=last_step, ended_at=None if code is None else start + 50)


def test_names_sort_by_start_and_parse_back():
    a, b = contract.attempt_name(T0, 0, "deadbeef"), contract.attempt_name(T0 + 0.5, 1, "00000000")
    assert a == "20270115T080000.000000Z-n0-deadbeef.json"
    assert sorted([b, a]) == [a, b]
    assert contract.parse_attempt_name(b) == ("20270115T080000.500000Z", 1, "00000000")
    for other in (contract.CRASH_LOOP_NAME, a + ".tmp-12", "latest", "step-000000001"):
        assert contract.parse_attempt_name(other) is None


def test_a_record_round_trips_and_a_partial_or_foreign_one_is_left_out():
    a = att(1, resumed=100, code=137, cause="rank 1 was killed by SIGKILL")
    raw = a.to_json()
    assert Attempt.from_json(a.name, raw) == a
    ledger = contract.parse_ledger({a.name: raw, att(2).name: raw[: len(raw) // 2], "x.json": raw,
                                    att(3).name: b'{"format": 99}', att(4).name: None})
    assert ledger == [a]


def test_consecutive_failures_past_the_budget_are_a_crash_loop():
    series = [att(1, code=137), att(2, code=201), att(3)]  # the third is running
    assert contract.crash_loop(series, 2) is None
    assert contract.crash_loop(series, 1) == series[:2]
    assert contract.crash_loop(series, None) is None  # no budget
    assert contract.crash_loop([att(1, code=137)], 0) == [series[0]]


def test_preemptions_never_count_and_do_not_reset_the_count():
    series = [att(1, code=137), att(2, code=143), att(3, stopping="SIGTERM"), att(4, code=137), att(5)]
    assert contract.attempt_end(series[2], series[3])[0] == "preempted"  # killed while stopping
    assert contract.crash_loop(series, 2) is None
    assert contract.crash_loop(series, 1) == [series[0], series[3]]


def test_a_newly_committed_step_resets_the_count_even_when_its_attempt_was_killed():
    # Attempt 2 committed step 200 but was killed before it recorded it: attempt 3 resumed from it.
    series = [att(1, code=137), att(2, resumed=None), att(3, resumed=200, code=137), att(4, resumed=200)]
    assert contract.made_progress(series[1], series[2])
    assert contract.crash_loop(series, 0) == [series[2]]
    assert contract.crash_loop(series, 1) is None
    # A commit recorded in its own record counts as much.
    assert contract.made_progress(att(5, resumed=200, committed=300, code=137), None)
    assert not contract.made_progress(att(5, resumed=200, committed=200, code=137), None)


def test_a_killed_attempt_without_a_record_of_its_end_is_unknown_and_counts():
    series = [att(1), att(2), att(3)]
    assert contract.attempt_end(series[0], series[1]) == ("failed", None, contract.CAUSE_UNKNOWN)
    assert contract.attempt_end(series[2], None)[0] == "running"
    assert contract.crash_loop(series, 1) == series[:2]
    message = contract.crash_loop_message(series[:2], series, 1)
    assert message.startswith("crash loop: 2 attempts in a row failed without committing a new step (--max-restarts 1)")
    assert message.count(contract.CAUSE_UNKNOWN) == 2 and "2027-01-15T08:01:40Z from no checkpoint: unknown (killed)" in message


def test_a_finished_attempt_ends_the_walk():
    series = [att(1, code=137), att(2, code=0), att(3, code=137)]
    assert contract.crash_loop(series, 0) == [series[2]]
    assert contract.crash_loop(series, 1) is None


def test_summary_shows_each_incident_with_steps_redone_seconds_lost_and_goodput():
    series = [att(1, resumed=None, committed=100, committed_at=T0 + 140, last_step=130, code=137),
              att(2, resumed=100, committed=300, committed_at=T0 + 290, code=143, last_step=300),
              att(3, resumed=300), att(1, node=1, code=201)]
    s = contract.summarize_ledger(series, now=T0 + 350, max_restarts=3)
    assert s.attempts == 3 and s.crash_loop is None  # node 0's series only
    first, second, running = s.incidents
    assert (first.kind, first.code, first.steps_redone, first.seconds_lost) == ("failed", 137, 30, 60.0)
    assert (second.kind, second.steps_redone, second.seconds_lost) == ("preempted", 0, 10.0)
    assert running.kind == "running" and running.steps_redone is None
    assert s.goodput == pytest.approx((40 + 90) / 250)


# --- the I/O, on a local folder ---------------------------------------------------------------

def ledger(tmp_path, node=0, max_restarts=1) -> Ledger:
    return Ledger.open(str(tmp_path), "run", node, max_restarts)


def records(tmp_path) -> list[Attempt]:
    d = tmp_path / "run" / contract.ATTEMPTS_DIR
    return contract.parse_ledger({n: (d / n).read_bytes() for n in os.listdir(d)})


def test_each_start_writes_its_own_record_and_names_how_the_previous_one_ended(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latest").write_text("100\n")
    first = ledger(tmp_path)
    assert first.begin(now=T0) is None
    first.update(committed=200, committed_at=T0 + 5)
    assert first.finish(137, "rank 1 was killed by SIGKILL", last_step=230, timeout=5) is None  # progress
    second = ledger(tmp_path)
    assert second.begin(now=T0 + 10) is None  # killed: never finishes
    third = ledger(tmp_path)
    assert third.begin(now=T0 + 20) is None
    a, b, c = records(tmp_path)
    assert (a.resumed_from, a.committed, a.code, a.last_step) == (100, 200, 137, 230)
    assert b.previous == {"attempt": a.name, "code": 137, "cause": "rank 1 was killed by SIGKILL"}
    assert c.previous == {"attempt": b.name, "code": None, "cause": contract.CAUSE_UNKNOWN}
    assert c.code is None and c.pid == os.getpid()


def test_node_0_stops_the_run_at_the_end_of_the_failure_that_spends_the_budget(tmp_path):
    one = ledger(tmp_path)
    assert one.begin(now=T0) is None
    assert one.finish(137, "rank 1 was killed by SIGKILL", last_step=3, timeout=5) is None
    two = ledger(tmp_path)
    assert two.begin(now=T0 + 10) is None
    verdict = two.finish(137, "rank 1 was killed by SIGKILL", last_step=3, timeout=5)
    assert verdict is not None and "crash loop: 2 attempts in a row" in verdict.message
    assert records(tmp_path)[-1].code == ExitCode.CRASH_LOOP
    doc = json.loads((tmp_path / "run" / contract.ATTEMPTS_DIR / contract.CRASH_LOOP_NAME).read_text())
    assert doc["attempts"] == [a.name for a in records(tmp_path)]
    # Every later start of any node refuses at once, and says how to start afresh.
    for node in (0, 1):
        again = ledger(tmp_path, node=node).begin(now=T0 + 20 + node)
        assert again is not None and "remove" in again.message and "another --run-id" in again.message


def test_a_preemption_does_not_spend_the_budget_and_node_0_judges_a_killed_predecessor_at_start(tmp_path):
    one = ledger(tmp_path, max_restarts=1)
    one.begin(now=T0)
    assert one.finish(143, "preempted", last_step=3, timeout=5) is None
    two = ledger(tmp_path, max_restarts=1)
    two.begin(now=T0 + 10)
    assert two.finish(143, "preempted", last_step=3, timeout=5) is None
    ledger(tmp_path, max_restarts=1).begin(now=T0 + 20)  # killed without a word
    ledger(tmp_path, max_restarts=1).begin(now=T0 + 30)  # killed without a word
    verdict = ledger(tmp_path, max_restarts=1).begin(now=T0 + 40)
    assert verdict is not None and verdict.message.count(contract.CAUSE_UNKNOWN) == 2


def test_other_nodes_see_node_0s_verdict_while_they_wait(tmp_path, monkeypatch):
    monkeypatch.setattr("trainer.ledger_io.VERDICT_POLL_S", 0.05)
    worker = ledger(tmp_path, node=1)
    assert worker.begin(now=T0) is None
    seen = threading.Event()
    worker.watch_verdict(lambda v: seen.set(), threading.Event())
    master = ledger(tmp_path, max_restarts=0)
    master.begin(now=T0 + 1)
    assert master.finish(201, "rank 1 lost its peers", last_step=None, timeout=5) is not None
    assert seen.wait(5)


def test_concurrent_starts_of_many_nodes_never_share_or_corrupt_a_record(tmp_path):
    ledgers = [ledger(tmp_path, node=n % 4) for n in range(16)]
    threads = [threading.Thread(target=l.begin, kwargs={"now": T0}) for l in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for l in ledgers:
        l.finish(137, "killed", last_step=None, timeout=5)
    got = records(tmp_path)
    assert len(got) == 16 and all(a.code in (137, ExitCode.CRASH_LOOP) for a in got)


def test_a_ledger_that_cannot_be_written_stands_aside(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    l = Ledger.open(str(blocked), "run", 0, 0)
    assert l.begin(now=T0) is None
    assert l.finish(137, "killed", last_step=None, timeout=1) is None


def test_an_attempt_killed_after_a_stop_request_is_a_preemption():
    a = att(1, code=137, stopping="SIGTERM")
    assert contract.attempt_end(a, None)[0] == "preempted"
    assert contract.attempt_end(att(1, code=1, stopping="SIGTERM"), None)[0] == "failed"  # its own bug


def test_launch_passes_its_max_restarts_to_the_runtime_and_to_the_backoff_limit():
    from launcher.job.render import spec_to_objects
    from launcher.job.spec import JobSpec

    job = spec_to_objects(JobSpec(script="train.py", max_restarts=7, checkpoint_uri="s3://b/ckpts"), name="j", code=None,
                          image="img")[0]
    assert job["spec"]["runPolicy"]["backoffLimit"] == 7
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        env = {e["name"]: e.get("value") for e in replica["template"]["spec"]["containers"][0]["env"]}
        assert env[contract.ENV_MAX_RESTARTS] == "7"


def test_an_elastic_job_gets_no_runtime_budget_its_pods_have_no_node_rank_to_keep_one_series():
    from launcher.job.render import spec_to_objects
    from launcher.job.spec import JobSpec

    job = spec_to_objects(JobSpec(script="train.py", max_restarts=7, nodes=4, min_nodes=2,
                                  checkpoint_uri="s3://b/ckpts"), name="j", code=None, image="img")[0]
    (worker,) = job["spec"]["pytorchReplicaSpecs"].values()
    env = {e["name"] for e in worker["template"]["spec"]["containers"][0]["env"]}
    assert contract.ENV_MAX_RESTARTS not in env and job["spec"]["elasticPolicy"]["maxRestarts"] == 7
