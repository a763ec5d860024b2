"""In-place restarts with real torchrun and gloo: a lost rank is recovered by a fresh torchrun in the same
supervisor (--in-place-restarts), recorded in the restart ledger, bit-identical to an uninterrupted run;
the budget and the crash-loop rule still end a rank that keeps dying; a stop still exits 143."""

from __future__ import annotations

import os
import signal

import pytest

from tests.helpers import EXAMPLE, FIXTURES, assert_no_workers, assert_nothing_left, read_json, run, start, wait_for
from trainer import contract
from trainer.contract import ExitCode
from trainer.control_folder import RankPid

pytestmark = pytest.mark.runtime

STEPS = 100
TRAIN_ARGS = ["--steps", str(STEPS), "--samples", "2048", "--hidden", "64"]
CRASH = os.path.join(FIXTURES, "crashloop.py")


def trainer_args(ckpt: str, result: str, *extra: str) -> list[str]:
    return ["--nproc-per-node", "2", "--checkpoint", ckpt, "--run-id", "exp", "--checkpoint-every-steps", "20",
            "--grace-seconds", "10", *extra, EXAMPLE, *TRAIN_ARGS, "--result", result]


def ledger(ckpt: str, run_id: str) -> list[contract.Attempt]:
    d = os.path.join(ckpt, run_id, contract.ATTEMPTS_DIR)
    return contract.parse_ledger({n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d)})


def text(path) -> str:
    with open(path, errors="replace") as f:
        return f.read()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("baseline")
    r = run(trainer_args(str(d / "ckpt"), str(d / "result.json")))
    assert r.returncode == 0, r.stdout + r.stderr
    return read_json(str(d / "result.json"))


def _kill_rank_1_after_a_commit(tmp_path, ckpt: str, extra: list[str], warm: bool = False):
    """Start a slowed run with a control folder, SIGKILL rank 1 once a step committed (`warm`: and the
    supervisor's spare for an in-place restart has torch imported); (proc, log, result)."""
    control, log = str(tmp_path / "control"), tmp_path / "log"
    result = str(tmp_path / "result.json")
    proc = start(trainer_args(ckpt, result, *extra) + ["--step-sleep", "0.03"], log_path=str(log),
                 env={contract.ENV_CONTROL_DIR: control})
    wait_for(lambda: os.path.exists(os.path.join(ckpt, "exp", "latest")), 180, "the first checkpoint")
    wait_for(lambda: len(RankPid.live(control)) == 2, 60, "both ranks' pids")
    ranks = RankPid.live(control)
    if warm:  # held still while the spare imports torch (seconds to minutes on loaded cores), not to end first
        for pid in ranks.values():
            os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: contract.LOG_SPARE_WARM in text(log), 300, "the warm spare")
    os.kill(ranks[1], signal.SIGKILL)
    if warm:
        os.kill(ranks[0], signal.SIGCONT)
    return proc, log, result


def test_a_killed_rank_restarts_in_place_from_the_warm_spare_and_the_run_ends_bit_identical(tmp_path, uninterrupted):
    ckpt = str(tmp_path / "ckpt")
    proc, log, result = _kill_rank_1_after_a_commit(tmp_path, ckpt, ["--in-place-restarts", "2"], warm=True)
    assert proc.wait(300) == 0, text(log)
    out = text(log)
    assert "restarting in place (1 of 2) after exit 137: rank 1 was killed by SIGKILL" in out, out[-3000:]
    # Its ranks were forked from the spare's forkserver (torch imported); a second spare waited for a
    # second restart that never came and was ended with the run.
    assert "starting 2 rank(s) of" in out and "from the warm spare" in out, out[-3000:]
    assert out.count(contract.LOG_SPARE_WARM) in (1, 2)
    first, second = ledger(ckpt, "exp")
    assert (first.code, first.in_place, second.in_place, second.code) == (137, False, True, 0)
    assert second.previous["code"] == 137 and second.resumed_from is not None and second.pid == first.pid
    resumed = read_json(result)
    assert resumed["resumed_from"] == second.resumed_from and resumed["sha256"] == uninterrupted["sha256"]
    assert_nothing_left(str(tmp_path / "control"))


def test_a_rank_that_keeps_dying_spends_the_in_place_budget_then_exits_retryably(tmp_path):
    r = run(["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ckpt"), "--run-id", "loop",
             "--in-place-restarts", "1", "--grace-seconds", "3", CRASH, "--mode", "crash"], timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 137, out
    assert out.count("restarting in place (") == 1 and out.count("in-place restart budget spent") == 1, out
    assert [(a.code, a.in_place) for a in ledger(str(tmp_path / "ckpt"), "loop")] == [(137, False), (137, True)]
    assert_no_workers(CRASH)


def test_in_place_restarts_count_toward_the_crash_loop_budget(tmp_path):
    r = run(["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ckpt"), "--run-id", "loop",
             "--in-place-restarts", "5", "--max-restarts", "1", "--grace-seconds", "3", CRASH, "--mode", "crash"],
            timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == ExitCode.CRASH_LOOP, out
    assert out.count("restarting in place (") == 1, out
    assert "crash loop: 2 attempts in a row failed without committing a new step (--max-restarts 1)" in out
    assert [a.in_place for a in ledger(str(tmp_path / "ckpt"), "loop")] == [False, True]
    assert_no_workers(CRASH)


def test_sigterm_after_a_cold_in_place_restart_still_commits_and_exits_143(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    proc, log, result = _kill_rank_1_after_a_commit(tmp_path, ckpt, ["--in-place-restarts", "2",
                                                                     "--cold-in-place-restarts"])
    wait_for(lambda: "restarting in place (1 of 2)" in text(log), 120, "the in-place restart")
    # The new attempt's ranks resumed and trained (their heartbeats start over from the resume step).
    wait_for(lambda: text(log).count("resuming after step") >= 1 and
             any(n.startswith("progress-rank-") for n in os.listdir(tmp_path / "control")), 180, "the new ranks")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == ExitCode.PREEMPTED, text(log)
    out = text(log)
    stopped = contract.parse_runtime_log(out.splitlines())["preempted_at"]
    assert stopped is not None and f"checkpoint step {stopped} committed" in out
    assert out.count("restarting in place (") == 1 and "spare" not in out  # new Pythons, as asked
    *_, last = ledger(ckpt, "exp")
    assert last.in_place and last.code == ExitCode.PREEMPTED and last.stopping == "SIGTERM"
    assert_no_workers(result)


def test_sigterm_during_an_in_place_restart_exits_143_without_starting_again(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    proc, log, result = _kill_rank_1_after_a_commit(tmp_path, ckpt, ["--in-place-restarts", "2"])
    wait_for(lambda: "restarting in place (1 of 2)" in text(log), 120, "the in-place restart")
    proc.send_signal(signal.SIGTERM)  # the new ranks are starting, or not yet started: either way a stop
    assert proc.wait(60) == ExitCode.PREEMPTED, text(log)
    assert text(log).count("restarting in place (") == 1
    *_, last = ledger(ckpt, "exp")
    assert last.in_place and last.stopping == "SIGTERM"
    assert_nothing_left(str(tmp_path / "control"))


def test_two_nodes_restart_in_place_together_on_the_next_generations_port(tmp_path, uninterrupted):
    """Two supervisors as the operator runs two pods (MASTER_ADDR/PORT, PET_NNODES=2, PET_NODE_RANK), one
    rank each: node 1's rank SIGKILLed, node 0's rank loses its peer; both restart in place and meet again
    on the master's port + 1, and the run ends at the uninterrupted two-rank run's weights."""
    import socket

    def two_free_ports() -> int:  # generation 1 meets on port + 1: both must be free
        while True:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", 0))
                try:
                    b.bind(("127.0.0.1", a.getsockname()[1] + 1))
                except OSError:
                    continue
                return a.getsockname()[1]

    port = two_free_ports()
    ckpt, result = str(tmp_path / "ckpt"), str(tmp_path / "result.json")
    args = trainer_args(ckpt, result, "--in-place-restarts", "1") + ["--step-sleep", "0.03"]
    args[args.index("--nproc-per-node") + 1] = "1"
    procs, logs, controls = [], [], []
    for node in (0, 1):
        controls.append(str(tmp_path / f"control-{node}"))
        logs.append(tmp_path / f"node-{node}.log")
        procs.append(start(args, log_path=str(logs[-1]), env={
            contract.ENV_CONTROL_DIR: controls[-1], "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "PET_NNODES": "2", "PET_NODE_RANK": str(node)}))
    try:
        wait_for(lambda: os.path.exists(os.path.join(ckpt, "exp", "latest")), 180, "the first checkpoint")
        wait_for(lambda: 1 in RankPid.live(controls[1]), 60, "rank 1's pid")
        os.kill(RankPid.live(controls[1])[1], signal.SIGKILL)
        assert [p.wait(300) for p in procs] == [0, 0], text(logs[0])[-3000:] + "\n--- node 1\n" + text(logs[1])[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    node0, node1 = text(logs[0]), text(logs[1])
    assert "restarting in place (1 of 1) after exit 137: rank 1 was killed by SIGKILL" in node1, node1[-3000:]
    assert "restarting in place (1 of 1) after exit" in node0 and "lost its peers" in node0, node0[-3000:]
    resumed = read_json(result)
    assert resumed["resumed_from"] is not None and resumed["sha256"] == uninterrupted["sha256"]
    by_node = {}
    for a in ledger(ckpt, "exp"):
        by_node.setdefault(a.node_rank, []).append((a.code, a.in_place))
    assert by_node[1][0][0] == 137 and by_node[1][1:] == [(0, True)], by_node
    assert by_node[0][1:] == [(0, True)], by_node
    assert_no_workers(result)
