"""The run folder's writer lease: the pure take-over-or-refuse rule, the holder's identity, and the
lease's I/O on a real local folder. Real `python -m trainer run` starts: tests/runtime/test_writer_lease.py."""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest

from trainer import contract
from trainer.processes import pid_namespace, start_time
from trainer.storage import LocalStorage
from trainer.writer_lease import LEASE_PERIOD_S, Lease, WriterLease, decide, identity, same_machine

NOW = 1_800_000_000.0
ME = Lease(holder="ns/job-b", host="node-1", pid=10, pid_start=500, pid_ns="4026531836", token="b" * 16,
           started_at=NOW, heartbeat_at=NOW)
OTHER = Lease(holder="ns/job-a", host="node-1", pid=7, pid_start=400, pid_ns="4026531836", token="a" * 16,
              started_at=NOW - 600, heartbeat_at=NOW - 12)


def other(**changes) -> Lease:
    return dataclasses.replace(OTHER, **changes)


CASES = [
    # (current lease, holder_alive, take?, expired?, words in the reason)
    (None, None, True, False, "no live writer"),
    (other(holder=ME.holder, host="node-9", pid_ns="1"), None, True, False, "held by this job"),
    (other(holder=ME.holder), True, True, False, "held by this job"),  # a restart while the old one is killed
    (other(heartbeat_at=NOW - LEASE_PERIOD_S - 1), True, True, True, "over the 60s lease"),
    (other(host="node-9", heartbeat_at=NOW - LEASE_PERIOD_S - 1), None, True, True, "over the 60s lease"),
    (other(), False, True, False, "is gone"),
    (other(), True, False, False, "is being written by ns/job-a on node-1 (pid 7, last heartbeat 12s ago)"),
    (other(host="node-9"), None, False, False, "is being written by ns/job-a on node-9"),
    (other(host="node-9"), False, False, False, "is being written"),  # a PID on another machine proves nothing
    (other(pid_ns="1"), False, False, False, "is being written"),  # nor one in another container
    (other(heartbeat_at=NOW + 30), None, False, False, "last heartbeat 0s ago"),  # a clock ahead of ours
    (other(heartbeat_at=NOW - LEASE_PERIOD_S), True, False, False, "is being written"),  # not yet over
]


@pytest.mark.parametrize("current, alive, take, expired, words", CASES,
                         ids=["no-lease", "same-job-elsewhere", "same-job-alive", "expired-alive",
                              "expired-elsewhere", "this-machine-dead", "this-machine-alive", "elsewhere-fresh",
                              "elsewhere-pid-unknowable", "other-pid-namespace", "clock-skew", "at-the-period"])
def test_a_start_takes_over_or_refuses(current, alive, take, expired, words):
    d = decide(current, ME, now=NOW, holder_alive=alive, run_uri="s3://b/ckpts/run-1")
    assert (d.take, d.expired) == (take, expired)
    assert words in d.reason
    if not take:
        assert d.reason.startswith("run folder s3://b/ckpts/run-1 is being written by ")
        assert d.reason.endswith("two writers would corrupt it; stop that run, or pass another --run-id")
        assert "\n" not in d.reason


def test_the_lease_period_is_a_parameter_of_the_rule():
    stale_by_10s = other(heartbeat_at=NOW - 10)
    assert not decide(stale_by_10s, ME, now=NOW, holder_alive=True).take
    assert decide(stale_by_10s, ME, now=NOW, period=5, holder_alive=True).take


def test_same_machine_needs_one_host_and_one_known_pid_namespace():
    assert same_machine(ME, OTHER)
    assert not same_machine(ME, other(host="node-9"))
    assert not same_machine(ME, other(pid_ns="1"))
    assert not same_machine(dataclasses.replace(ME, pid_ns="0"), other(pid_ns="0"))


IDENTITY_CASES = [
    ({contract.ENV_WRITER_ID: "ml/run-1", "MASTER_ADDR": "run-1-master-0"}, "ml/run-1"),
    ({"MASTER_ADDR": "run-1-master-0", "PET_NODE_RANK": "1"}, "job run-1 (rendezvous run-1-master-0)"),
    ({"PET_MASTER_ADDR": "run-1-node-0-0.run-1"}, "job run-1 (rendezvous run-1-node-0-0.run-1)"),
    ({}, "local run host-a:42:999"),
]


@pytest.mark.parametrize("env, expected", IDENTITY_CASES, ids=["given", "pytorchjob", "trainjob", "local"])
def test_every_node_and_restart_of_a_job_shares_an_identity_and_a_local_run_has_its_own(env, expected):
    assert identity(env, "run-1", host="host-a", pid=42, pid_start=999) == expected


def test_a_record_round_trips_and_a_broken_one_reads_as_none():
    assert Lease.from_json(ME.to_json()) == ME
    for raw in (None, b"", b"{", b"[]", b'{"format": 1}', ME.to_json().replace(b'"format": 1', b'"format": 9'),
                b'{"format": 1, "holder": "x", "host": "h", "pid": "p", "pid_start": 1, "pid_ns": "1", '
                b'"token": "t", "started_at": 1, "heartbeat_at": 1}'):
        assert Lease.from_json(raw) is None


def me_here(holder: str = "ns/job-b") -> Lease:
    pid = os.getpid()
    return Lease(holder=holder, host="this-host", pid=pid, pid_start=start_time(pid), pid_ns=pid_namespace(),
                 token=os.urandom(8).hex(), started_at=NOW, heartbeat_at=NOW)


def lease_in(tmp_path, holder: str = "ns/job-b", storage=None, **kw) -> WriterLease:
    storage = storage or LocalStorage(str(tmp_path))
    return WriterLease(storage, os.path.join(str(tmp_path), "run"), me_here(holder), settle=0, **kw)


def lease_file(tmp_path) -> str:
    return os.path.join(str(tmp_path), "run", contract.WRITER_LEASE_NAME)


def test_a_start_takes_a_free_folder_and_releases_its_lease_at_the_end(tmp_path):
    lease = lease_in(tmp_path)
    assert lease.acquire().take
    held = Lease.from_json(open(lease_file(tmp_path), "rb").read())
    assert held is not None and held.token == lease.me.token
    lease.release()
    assert not os.path.exists(lease_file(tmp_path))


def test_a_refused_start_writes_nothing(tmp_path):
    first = lease_in(tmp_path, "ns/job-a")
    assert first.acquire().take
    before = open(lease_file(tmp_path), "rb").read()
    second = lease_in(tmp_path, "ns/job-b")
    d = second.acquire()
    assert not d.take and "is being written by ns/job-a on this-host" in d.reason
    second.release()  # a refused start's release touches nothing
    assert open(lease_file(tmp_path), "rb").read() == before
    assert os.listdir(os.path.join(str(tmp_path), "run")) == [contract.WRITER_LEASE_NAME]


def test_a_lease_of_a_dead_process_on_this_machine_is_taken_over(tmp_path):
    os.makedirs(os.path.join(str(tmp_path), "run"))
    gone = dataclasses.replace(me_here("local run x"), pid=2 ** 22 + 1, pid_start=1, heartbeat_at=NOW * 2)
    with open(lease_file(tmp_path), "wb") as f:
        f.write(gone.to_json())
    assert lease_in(tmp_path).acquire().take


class RivalAfterUs(LocalStorage):
    """A folder where another job's start writes the lease right after each of ours lands (the race)."""

    def __init__(self, root: str, rival: Lease) -> None:
        super().__init__(root)
        self.rival = rival

    def write_small(self, path, data, *, before_replace=None):
        super().write_small(path, data, before_replace=before_replace)
        if path.endswith(contract.WRITER_LEASE_NAME):
            super().write_small(path, self.rival.to_json())


def test_of_two_starts_at_once_the_one_whose_write_was_overwritten_refuses(tmp_path):
    rival = dataclasses.replace(me_here("ns/job-a"), heartbeat_at=NOW * 2)
    lease = lease_in(tmp_path, storage=RivalAfterUs(str(tmp_path), rival))
    d = lease.acquire()
    assert not d.take and "is being written by ns/job-a" in d.reason
    lease.release()
    assert Lease.from_json(open(lease_file(tmp_path), "rb").read()) == rival  # the winner's lease stays


def test_a_holder_whose_folder_another_job_took_is_told_once_and_stops_heartbeating(tmp_path):
    lease = lease_in(tmp_path, heartbeat=0.01)
    assert lease.acquire().take
    lost: list[str] = []
    told = threading.Event()
    # The taker's record lands before the first beat: written while a beat runs, between its read and its
    # write, the beat would overwrite it (the taker's own read-back then refuses it, as acquire does).
    taker = dataclasses.replace(me_here("ns/job-a"), host="node-9", heartbeat_at=NOW * 2)
    LocalStorage(str(tmp_path)).write_small(lease_file(tmp_path), taker.to_json())
    lease.start_heartbeat(lambda message: (lost.append(message), told.set()))
    assert told.wait(30)
    lease.release()
    assert len(lost) == 1 and "ns/job-a on node-9" in lost[0]
    assert Lease.from_json(open(lease_file(tmp_path), "rb").read()) == taker  # neither overwritten nor removed


def test_the_heartbeat_moves_while_the_lease_is_held(tmp_path):
    lease = lease_in(tmp_path, heartbeat=0.01)
    assert lease.acquire().take
    first = Lease.from_json(open(lease_file(tmp_path), "rb").read())
    moved = threading.Event()
    lease.start_heartbeat(lambda message: None)

    def watch() -> None:
        while not moved.is_set():
            now = Lease.from_json(LocalStorage(str(tmp_path)).read_small(lease_file(tmp_path)))
            if now is not None and now.heartbeat_at > first.heartbeat_at:
                moved.set()

    threading.Thread(target=watch, daemon=True).start()
    assert moved.wait(30)
    lease.release()
    assert not os.path.exists(lease_file(tmp_path))


def test_launch_gives_every_pod_of_a_job_one_writer_identity_and_a_namesake_in_another_namespace_another():
    from launcher.job.render import spec_to_objects
    from launcher.job.spec import JobSpec

    def ids(namespace: str) -> set[str]:
        job = spec_to_objects(JobSpec(script="train.py", nodes=2, namespace=namespace, checkpoint_uri="s3://b/c"),
                              name="run-1", code=None, image="img")[0]
        return {e["value"] for r in job["spec"]["pytorchReplicaSpecs"].values()
                for e in r["template"]["spec"]["containers"][0]["env"] if e["name"] == contract.ENV_WRITER_ID}

    assert ids("ml") == {"ml/run-1"} and ids("team-b") == {"team-b/run-1"}


def test_a_killed_holder_not_yet_waited_for_is_not_running_and_a_reused_pid_is_another_process():
    import signal
    import subprocess
    import sys

    from tests.helpers import wait_for
    from trainer.processes import is_running

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = start_time(child.pid)
        assert is_running(child.pid, started) and is_running(child.pid, None)
        assert not is_running(child.pid, started + 1)  # the PID now names a later process
        os.kill(child.pid, signal.SIGKILL)
        # A zombie until waited for: /proc still lists it, with its start time.
        wait_for(lambda: open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", 30,
                 "the killed child to be a zombie")
        assert start_time(child.pid) == started and not is_running(child.pid, started)
    finally:
        child.kill()
        child.wait()
    assert not is_running(child.pid, started)
