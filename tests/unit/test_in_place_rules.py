"""In-place restarts, the pure parts: which ends restart in place, the budget, the ledger's field, the views."""

from __future__ import annotations

import json

from launcher.status import ledger as status_ledger
from trainer import contract
from trainer.contract import ExitCode
from trainer.control_folder import (Committed, Preempted, Progress, RankError, RankPid, StopRequest,
                                    SpareReady, TorchrunResult, RankFailure, clear_attempt)
from trainer.supervisor.classify import Outcome, classify
from trainer.supervisor import RunConfig, torchrun_args
from trainer.supervisor.in_place import IN_PLACE_RENDEZVOUS_TIMEOUT_S, budget_spent, restart_in_place, static_nodes

LOST = Outcome(137, "rank 1 was killed by SIGKILL", rank_lost=True)


def rule(outcome, **kw):
    args = dict(stopping=False, static=True, used=0, budget=2) | kw
    return restart_in_place(outcome, **args)


def test_only_a_lost_rank_restarts_in_place_within_the_budget():
    assert rule(LOST) and rule(Outcome(ExitCode.HANG, "hang", rank_lost=True))
    assert rule(Outcome(ExitCode.INFRA, "rank 0 lost its peers", rank_lost=True))
    for never in (Outcome(ExitCode.USER_ERROR, "raised"), Outcome(ExitCode.USAGE, "bad flags"),
                  Outcome(ExitCode.CRASH_LOOP, "crash loop"), Outcome(ExitCode.PREEMPTED, "preempted"),
                  Outcome(ExitCode.INFRA, "storage kept failing"), Outcome(0, "finished")):
        assert not rule(never), never
    assert not rule(LOST, stopping=True) and not rule(LOST, static=False) and not rule(LOST, budget=0)
    assert rule(LOST, used=1) and not rule(LOST, used=2)
    assert budget_spent(LOST, stopping=False, static=True, used=2, budget=2)
    assert not budget_spent(LOST, stopping=False, static=True, used=0, budget=0)  # off: no line
    assert not budget_spent(Outcome(1, "raised"), stopping=False, static=True, used=2, budget=2)


def test_classify_marks_what_a_fresh_torchrun_may_recover():
    def end(**kw):
        facts = dict(torchrun_rc=1, result=None, errors=[], preempted=None, stop_reason=None, hang=None) | kw
        return classify(**facts)

    killed = TorchrunResult(failures=(RankFailure(1, -9, 1.0, "SIGKILL"),))
    assert end(result=killed).rank_lost and end(hang="rank 0 stalled").rank_lost
    loader = TorchrunResult(failures=(RankFailure(0, 137, 1.0),))
    assert end(result=loader) == Outcome(137, "rank 0 exited with 137", rank_lost=True)
    peers = [RankError(0, "RuntimeError", "Connection closed by peer", 1.0, comm_error=True)]
    assert end(errors=peers).code == ExitCode.INFRA and end(errors=peers).rank_lost
    user = [RankError(0, "ValueError", "bad", 1.0)]
    assert not end(errors=user).rank_lost and not end(result=TorchrunResult(failures=(RankFailure(0, 3),))).rank_lost
    assert not end(result=killed, stop_reason="SIGTERM", preempted=Preempted(5, 1.0)).rank_lost


def test_one_node_or_a_static_set_of_nodes_restart_in_place_and_elastic_jobs_do_not():
    assert static_nodes({}) and static_nodes({"PET_NNODES": "1"})
    assert static_nodes({"PET_NNODES": "2", "MASTER_ADDR": "j-master-0", "RANK": "1"})
    assert not static_nodes({"PET_NNODES": "1:2"})
    assert not static_nodes({"PET_NNODES": "2", "PET_RDZV_ENDPOINT": "host:1", "PET_RDZV_BACKEND": "c10d"})


def test_each_generation_of_a_static_job_meets_on_its_own_port_and_gives_up_on_absent_peers():
    cfg = RunConfig(script="train.py")
    env = {"MASTER_ADDR": "j-master-0", "MASTER_PORT": "23456", "PET_NNODES": "2", "RANK": "1"}
    first, third = torchrun_args(cfg, env), torchrun_args(cfg, env, generation=2)
    assert "--master-port=23456" in first and not any(a.startswith("--rdzv-conf") for a in first)
    assert "--master-port=23458" in third and f"--rdzv-conf=timeout={IN_PLACE_RENDEZVOUS_TIMEOUT_S}" in third
    # One node: torchrun's --standalone picks its own free port every time.
    assert torchrun_args(cfg, {}, generation=1) == torchrun_args(cfg, {})


def test_clearing_an_attempt_leaves_only_what_the_supervisor_owns(tmp_path):
    d = str(tmp_path)
    Progress(0, 5, 1.0).write(d), Committed(4, 1.0).write(d), Preempted(4, 1.0).write(d)
    RankError(1, "E", "m", 1.0).write(d), RankPid(1, 10, 20).write(d), TorchrunResult().write(d)
    (tmp_path / "progress-rank-1.tmp").write_text("x")
    (tmp_path / "unrelated").write_text("kept")
    clear_attempt(d)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated"]
    StopRequest("SIGTERM").write(d)
    clear_attempt(d)
    assert StopRequest.exists(d)
    SpareReady(123, 4.5).write(d)  # the next attempt's: the restart that clears the ended one needs it
    clear_attempt(d)
    assert SpareReady.read(d) == SpareReady(123, 4.5)
    SpareReady.clear(d)
    assert SpareReady.read(d) is None


def test_a_spare_is_started_for_the_next_in_place_restart_only_where_one_can_come(monkeypatch):
    from trainer.supervisor.loop import Supervisor

    def wants(env=None, **kw):
        sup = Supervisor(RunConfig(script="t.py", **{"in_place_restarts": 1, **kw}), env=env or {})
        return sup._wants_spare()

    assert wants()
    assert not wants(in_place_restarts=0) and not wants(cold_in_place_restarts=True)
    assert not wants(env={"PET_NNODES": "1:4", "PET_RDZV_ENDPOINT": "m:29400"})  # elastic: never in place
    sup = Supervisor(RunConfig(script="t.py", in_place_restarts=1), env={})
    sup.in_place_used = 1
    assert not sup._wants_spare()  # the budget is spent: no restart left to start
    sup = Supervisor(RunConfig(script="t.py", in_place_restarts=1), env={})
    sup.request_stop("SIGTERM")
    assert not sup._wants_spare()


def _attempt(name_t: float, **kw) -> contract.Attempt:
    return contract.Attempt(name=contract.attempt_name(name_t, 0, "0000000a"), node_rank=0, started_at=name_t, **kw)


def test_the_ledger_field_parses_back_and_older_records_read_as_not_in_place():
    a = _attempt(100.0, code=0, in_place=True)
    assert contract.Attempt.from_json(a.name, a.to_json()) == a
    old = json.loads(a.to_json())
    del old["in_place"]
    assert contract.Attempt.from_json(a.name, json.dumps(old).encode()).in_place is False
    old["in_place"] = "yes"
    assert contract.Attempt.from_json(a.name, json.dumps(old).encode()) is None


def test_in_place_restarts_count_toward_the_crash_loop_and_show_apart_in_status():
    pod = _attempt(100.0, ended_at=110.0, code=137, cause="rank 1 was killed by SIGKILL")
    again = _attempt(111.0, ended_at=120.0, code=137, cause="rank 1 was killed by SIGKILL", in_place=True)
    last = _attempt(130.0, ended_at=140.0, code=0, in_place=False)
    assert contract.crash_loop([pod, again], 1) == [pod, again]
    summary = contract.summarize_ledger([pod, again, last], now=150.0)
    assert summary.in_place == 1
    assert [i.recovered_in_place for i in summary.incidents] == [True, False, False]
    head, _, first, second = status_ledger.lines(summary)
    assert head.endswith(", 1 restart(s) in place")
    assert "[in place] exit 137" in first and "[in place]" not in second
    doc = status_ledger.doc(summary)
    assert doc["restarts_in_place"] == 1 and [i["recovered_in_place"] for i in doc["incidents"]] == [True, False]


def test_chaos_recovers_a_kill_in_place_only_where_the_next_fault_keeps_the_attempt_settings():
    from kubetrain_chaos.plan import Fault, in_place_budget

    kill = Fault("kill-worker", 21, 20, 20)
    same = Fault("kill-loader-worker", 41, 40, 20)
    other = Fault("kill-worker", 33, 32, 32)
    armed = Fault("kill-during-upload", 40, 20, 20, "files", 40)
    assert in_place_budget([kill, same], 20, None, None) == 2
    assert in_place_budget([kill, other], 20, None, None) == 0  # the next attempt needs cadence 32
    assert in_place_budget([kill, armed], 20, None, None) == 0  # its kill point is armed at a start
    assert in_place_budget([kill], 20, None, 20) == 1 and in_place_budget([kill], 20, None, 10) == 0
    assert in_place_budget([Fault("sigterm", 30), kill], 20, None, None) == 0
