"""The crash-loop budget with real torchrun: a script that dies with a retryable cause on every start
stops for good after --max-restarts restarts, preemptions do not count, and every node stops."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from tests.helpers import FIXTURES, assert_no_workers, run, start, wait_for
from trainer import contract
from trainer.contract import ExitCode
from trainer.ledger_io import Ledger

pytestmark = pytest.mark.runtime
SCRIPT = os.path.join(FIXTURES, "crashloop.py")


def attempt(tmp_path, mode: str, max_restarts: int = 1, nproc: int = 2):
    return run(["--nproc-per-node", str(nproc), "--checkpoint", str(tmp_path / "ckpt"), "--run-id", "loop",
                "--max-restarts", str(max_restarts), "--grace-seconds", "3", SCRIPT, "--mode", mode], timeout=120)


def ledger(tmp_path) -> list[contract.Attempt]:
    d = tmp_path / "ckpt" / "loop" / contract.ATTEMPTS_DIR
    return contract.parse_ledger({n: (d / n).read_bytes() for n in os.listdir(d)})


def test_a_crash_on_every_start_stops_after_the_budget_with_the_permanent_code(tmp_path):
    first = attempt(tmp_path, "crash")
    assert first.returncode == 137, first.stdout + first.stderr
    second = attempt(tmp_path, "crash")
    out = second.stdout + second.stderr
    assert second.returncode == ExitCode.CRASH_LOOP, out
    assert "crash loop: 2 attempts in a row failed without committing a new step (--max-restarts 1)" in out
    assert out.count("exit 137 (rank ") >= 2 and "permanent" in out
    assert not contract.is_retryable(ExitCode.CRASH_LOOP) and 1 <= ExitCode.CRASH_LOOP <= 127
    # Any later start refuses at once, before torchrun, and says how to start afresh.
    t0 = time.monotonic()
    third = attempt(tmp_path, "crash")
    assert third.returncode == ExitCode.CRASH_LOOP and time.monotonic() - t0 < 20
    assert "ready" not in third.stdout + third.stderr and "another --run-id" in third.stdout + third.stderr
    records = ledger(tmp_path)
    assert [a.code for a in records] == [137, ExitCode.CRASH_LOOP, ExitCode.CRASH_LOOP]
    assert records[1].previous["code"] == 137 and records[0].resumed_from is None
    assert_no_workers(SCRIPT)


def test_preemptions_do_not_count_against_the_budget(tmp_path):
    proc = start(["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ckpt"), "--run-id", "loop",
                  "--max-restarts", "1", "--grace-seconds", "3", SCRIPT, "--mode", "wait"],
                 log_path=str(tmp_path / "wait.log"))
    wait_for(lambda: "ready" in (tmp_path / "wait.log").read_text(), 90, "the ranks to start")
    proc.send_signal(signal.SIGTERM)  # a preemption the ranks cannot checkpoint for: nothing commits
    assert proc.wait(60) in (ExitCode.PREEMPTED, 137), (tmp_path / "wait.log").read_text()
    crash = attempt(tmp_path, "crash")  # one failure: within a budget of 1 unless the preemption counted
    assert crash.returncode == 137, crash.stdout + crash.stderr
    again = attempt(tmp_path, "crash")
    assert again.returncode == ExitCode.CRASH_LOOP, again.stdout + again.stderr
    records = ledger(tmp_path)
    assert records[0].stopping == "SIGTERM" and contract.attempt_end(records[0], records[1])[0] == "preempted"
    assert_no_workers(SCRIPT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_other_nodes_stop_too_when_node_0_stops_the_run(tmp_path):
    uri = str(tmp_path / "ckpt")
    for i in range(2):  # node 0's record of two failures in a row, as earlier starts left it
        seeded = Ledger.open(uri, "loop", 0, 1)
        seeded.begin(now=time.time() - 100 + i)
        seeded.finish(137, "rank 1 was killed by SIGKILL", last_step=None, timeout=5)
    os.remove(os.path.join(uri, "loop", contract.ATTEMPTS_DIR, contract.CRASH_LOOP_NAME))  # decided at node 0's start
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "PET_NNODES": "2"}
    args = ["--nproc-per-node", "1", "--checkpoint", uri, "--run-id", "loop", "--max-restarts", "1",
            SCRIPT, "--mode", "wait"]
    worker = start(args, env={**env, "PET_NODE_RANK": "1"}, log_path=str(tmp_path / "node1.log"))
    time.sleep(3)  # node 1 waits for node 0 in the rendezvous
    assert worker.poll() is None, (tmp_path / "node1.log").read_text()
    t0 = time.monotonic()
    master = run(args, env={**env, "PET_NODE_RANK": "0"}, timeout=60)
    assert master.returncode == ExitCode.CRASH_LOOP, master.stdout + master.stderr
    assert worker.wait(30) == ExitCode.CRASH_LOOP, (tmp_path / "node1.log").read_text()
    assert time.monotonic() - t0 < 30
    assert "node 0 stopped the run: crash loop" in (tmp_path / "node1.log").read_text()
    assert_no_workers(SCRIPT)
