"""A run folder refuses a second live writer, with real `python -m trainer run` and torchrun gloo ranks:
the second start exits 2 with one line and writes nothing, the first completes untouched; a start after
the holder was SIGKILLed, and a restart of the same job, take over at once. The lease's state is driven
through its file (a heartbeat far in the future is fresh, one at 0 expired), never by racing a clock."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time

import pytest

from tests.helpers import FIXTURES, assert_no_workers, run, start, wait_for
from trainer import contract
from trainer.contract import ExitCode
from trainer.processes import descendants, parent_map
from trainer.writer_lease import Lease

pytestmark = pytest.mark.runtime
SCRIPT = os.path.join(FIXTURES, "hold_folder.py")
REFUSED = "is being written by {holder} on {host}"
TAIL = "two writers would corrupt it; stop that run, or pass another --run-id"


def args(tmp_path, release: str, run_id: str = "run-1") -> list[str]:
    return ["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ckpt"), "--run-id", run_id,
            "--grace-seconds", "5", SCRIPT, "--release", release]


def folder_state(run_dir) -> dict[str, bytes]:
    """Every file under the run folder with its bytes: what a refused start must leave as it was."""
    out = {}
    for dirpath, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, run_dir)] = f.read()
    return out


def checkpoint_files(state: dict[str, bytes]) -> dict[str, bytes]:
    """The files of the checkpoint protocol (steps, `latest`): not the ledger's, not the lease."""
    return {k: v for k, v in state.items()
            if not k.startswith(contract.ATTEMPTS_DIR + os.sep) and k != contract.WRITER_LEASE_NAME}


def read_lease(run_dir) -> Lease | None:
    path = os.path.join(run_dir, contract.WRITER_LEASE_NAME)
    return Lease.from_json(open(path, "rb").read()) if os.path.exists(path) else None


def test_a_second_live_run_on_the_same_folder_is_refused_and_the_first_completes_untouched(tmp_path):
    run_dir = tmp_path / "ckpt" / "run-1"
    release = str(tmp_path / "release")
    first = start(args(tmp_path, release), log_path=str(tmp_path / "first.log"))
    try:
        wait_for(lambda: "holding after step 1" in (tmp_path / "first.log").read_text(), 120, "the first run's commit")
        holder = read_lease(run_dir)
        assert holder is not None and holder.pid == first.pid and holder.holder.startswith("local run ")
        before = folder_state(run_dir)

        second = run(args(tmp_path, release), timeout=120)
        out = second.stdout + second.stderr
        assert second.returncode == ExitCode.USAGE, out
        lines = [line for line in out.splitlines() if TAIL in line]
        assert len(lines) == 1 and f"run folder {run_dir} " + REFUSED.format(holder=holder.holder, host=holder.host) \
            in lines[0] and f"(pid {first.pid}, last heartbeat " in lines[0] and "permanent" in lines[0], out
        assert "holding" not in out and "rank(s) of" not in out  # no torchrun, no rank
        after = folder_state(run_dir)
        assert sorted(after) == sorted(before)  # no ledger record, no lease write, no checkpoint of the refused start
        # The first run's own files may have moved on meanwhile (its heartbeat, its ledger record's commit
        # mark); its checkpoint is as it was, and the lease is still its own.
        assert checkpoint_files(after) == checkpoint_files(before)
        assert read_lease(run_dir).token == holder.token

        open(release, "w").close()
        assert first.wait(120) == 0, (tmp_path / "first.log").read_text()
        assert (run_dir / contract.LATEST_NAME).read_text().strip() == "2"
        assert read_lease(run_dir) is None  # released at its clean end
        assert_no_workers(SCRIPT)
    finally:  # a failed assertion must not leave the first run holding the folder
        open(release, "w").close()
        if first.poll() is None:
            first.wait(120)


def test_after_the_holder_is_sigkilled_a_rerun_takes_over_at_once(tmp_path):
    run_dir = tmp_path / "ckpt" / "run-1"
    release = str(tmp_path / "release")
    first = start(args(tmp_path, release), log_path=str(tmp_path / "first.log"))
    try:
        wait_for(lambda: "holding after step 1" in (tmp_path / "first.log").read_text(), 120, "the first run's commit")
        left = read_lease(run_dir)
        # The supervisor, torchrun and the ranks die at once: nothing releases the lease, its heartbeat is fresh.
        below = descendants(first.pid, parent_map())
        first.send_signal(signal.SIGKILL)
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        first.wait(30)
        assert_no_workers(SCRIPT)
        assert read_lease(run_dir) == left
        # Held for an hour more, as far as the clock goes: only its dead PID lets the rerun in.
        (run_dir / contract.WRITER_LEASE_NAME).write_bytes(
            dataclasses.replace(left, heartbeat_at=time.time() + 3600).to_json())

        open(release, "w").close()
        rerun = run(args(tmp_path, release), timeout=120)
        out = rerun.stdout + rerun.stderr
        assert rerun.returncode == 0, out
        assert "resuming after step 1" in out and TAIL not in out and "over the" not in out
        assert (run_dir / contract.LATEST_NAME).read_text().strip() == "3"
        assert read_lease(run_dir) is None
    finally:  # a failed assertion must not leave the first run holding the folder
        open(release, "w").close()
        if first.poll() is None:
            first.wait(120)


def seed_lease(run_dir, **fields) -> Lease:
    """A lease as another node's supervisor left it (a PID this machine cannot look into)."""
    lease = Lease(holder="ml/run-1", host="node-elsewhere", pid=1, pid_start=12345, pid_ns="4026531999",
                  token="0" * 16, started_at=time.time() - 600, heartbeat_at=time.time() + 3600)
    lease = dataclasses.replace(lease, **fields)
    os.makedirs(run_dir, exist_ok=True)
    (run_dir / contract.WRITER_LEASE_NAME).write_bytes(lease.to_json())
    return lease


def test_a_restart_of_the_same_job_takes_over_at_once_and_another_job_is_refused(tmp_path):
    run_dir = tmp_path / "ckpt" / "run-1"
    release = str(tmp_path / "release")
    open(release, "w").close()
    held = seed_lease(run_dir)  # fresh for an hour, on a machine we cannot look into

    other_job = run(args(tmp_path, release), env={contract.ENV_WRITER_ID: "ml-other/run-1"}, timeout=120)
    out = other_job.stdout + other_job.stderr
    assert other_job.returncode == ExitCode.USAGE, out
    assert REFUSED.format(holder="ml/run-1", host="node-elsewhere") + " (pid 1, last heartbeat 0s ago)" in out
    assert os.listdir(run_dir) == [contract.WRITER_LEASE_NAME] and read_lease(run_dir) == held

    restart = run(args(tmp_path, release), env={contract.ENV_WRITER_ID: "ml/run-1"}, timeout=120)
    out = restart.stdout + restart.stderr
    assert restart.returncode == 0, out
    assert TAIL not in out and (run_dir / contract.LATEST_NAME).read_text().strip() == "2"
    assert read_lease(run_dir) is None


def test_an_expired_lease_of_another_job_is_taken_over_with_one_warning(tmp_path):
    run_dir = tmp_path / "ckpt" / "run-1"
    release = str(tmp_path / "release")
    open(release, "w").close()
    seed_lease(run_dir, heartbeat_at=0.0)
    proc = run(args(tmp_path, release), timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    warnings = [line for line in out.splitlines() if "taking over the run folder's writer lease" in line]
    assert len(warnings) == 1 and "ml/run-1 on node-elsewhere (pid 1) last heartbeat" in warnings[0] \
        and "over the 60s lease" in warnings[0], out


def test_a_run_whose_folder_another_job_took_over_stops_its_ranks_with_the_permanent_code(tmp_path):
    run_dir = tmp_path / "ckpt" / "run-1"
    release = str(tmp_path / "release")
    first = start(args(tmp_path, release), log_path=str(tmp_path / "first.log"))
    try:
        wait_for(lambda: "holding after step 1" in (tmp_path / "first.log").read_text(), 120, "the first run's commit")
        # As a start of another job leaves it once it took over (this run's heartbeat looked expired to it).
        taker = seed_lease(run_dir, holder="ml-other/run-1")
        assert first.wait(120) == ExitCode.USAGE, (tmp_path / "first.log").read_text()
        log = (tmp_path / "first.log").read_text()
        assert "another run took over the run folder" in log and "ml-other/run-1 on node-elsewhere" in log
        assert (run_dir / contract.LATEST_NAME).read_text().strip() == "1"
        assert read_lease(run_dir) == taker  # neither overwritten nor removed
        assert_no_workers(SCRIPT)
    finally:
        open(release, "w").close()
        if first.poll() is None:
            first.wait(120)
