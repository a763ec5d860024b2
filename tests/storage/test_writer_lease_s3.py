"""The run folder's writer lease on S3 (moto): a second live `python -m trainer run` on the same
s3:// run folder is refused with exit 2 and writes no object; two starts of different jobs at the same
instant let exactly one in (S3 has no compare-and-swap we rely on: write, settle, read back)."""

from __future__ import annotations

import os
import threading

import pytest

from tests.helpers import FIXTURES, assert_no_workers, run, start, wait_for
from trainer import contract
from trainer.contract import ExitCode
from trainer.storage import open_storage
from trainer.writer_lease import Lease, WriterLease

pytestmark = pytest.mark.storage
SCRIPT = os.path.join(FIXTURES, "hold_folder.py")


def objects(s3_env, prefix: str) -> dict[str, bytes]:
    client, bucket = s3_env["client"], s3_env["bucket"]
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in listing.get("Contents", [])}


def test_a_second_live_run_on_the_same_s3_folder_is_refused_and_writes_nothing(tmp_path, s3_env):
    uri = f"s3://{s3_env['bucket']}/ckpts"
    release = str(tmp_path / "release")
    argv = ["--nproc-per-node", "2", "--checkpoint", uri, "--run-id", "run-1", "--grace-seconds", "5", SCRIPT,
            "--release", release]
    first = start(argv, env=s3_env["env"], log_path=str(tmp_path / "first.log"))
    try:
        wait_for(lambda: "holding after step 1" in (tmp_path / "first.log").read_text(), 120, "the first run's commit")
        lease_key = f"ckpts/run-1/{contract.WRITER_LEASE_NAME}"
        before = objects(s3_env, "ckpts/run-1/")
        holder = Lease.from_json(before[lease_key])
        assert holder is not None and holder.pid == first.pid

        second = run(argv, env=s3_env["env"], timeout=120)
        out = second.stdout + second.stderr
        assert second.returncode == ExitCode.USAGE, out
        assert (f"run folder {uri}/run-1 is being written by {holder.holder} on {holder.host} (pid {first.pid}, "
                "last heartbeat ") in out and "stop that run, or pass another --run-id" in out
        after = objects(s3_env, "ckpts/run-1/")
        assert sorted(after) == sorted(before)  # no ledger record, no checkpoint object of the refused start
        # The first run's own objects may have moved on meanwhile (its heartbeat, its ledger record's commit
        # mark); its checkpoint is as it was, and the lease is still its own.
        assert {k: v for k, v in after.items() if "/attempts/" not in k and k != lease_key} == \
            {k: v for k, v in before.items() if "/attempts/" not in k and k != lease_key}
        assert Lease.from_json(after[lease_key]).token == holder.token

        open(release, "w").close()
        assert first.wait(120) == 0, (tmp_path / "first.log").read_text()
        assert lease_key not in objects(s3_env, "ckpts/run-1/")
        assert_no_workers(SCRIPT)
    finally:  # a failed assertion must not leave the first run holding the folder
        open(release, "w").close()
        if first.poll() is None:
            first.wait(120)


class _InStep:
    """A storage of one job that, with the others, first reads the lease, then writes it, then reads it
    back: the worst case of starts at the same instant, made certain rather than left to the clock."""

    def __init__(self, storage, read: threading.Barrier, wrote: threading.Barrier) -> None:
        self._storage, self._read, self._wrote, self._reads = storage, read, wrote, 0

    def read_small(self, path):
        data = self._storage.read_small(path)
        self._reads += 1
        if self._reads == 1:
            self._read.wait(60)  # every job has read before any writes
        return data

    def write_small(self, path, data):
        self._storage.write_small(path, data)
        self._wrote.wait(60)  # every write landed before any read-back

    def __getattr__(self, name):
        return getattr(self._storage, name)


def test_two_jobs_starting_at_the_same_instant_let_exactly_one_in(s3_env):
    uri = f"s3://{s3_env['bucket']}/ckpts"
    jobs = ("ns-a/run-1", "ns-b/run-1", "ns-c/run-1")
    read, wrote = threading.Barrier(len(jobs)), threading.Barrier(len(jobs))
    leases = []
    for job in jobs:
        lease = WriterLease.for_run(open_storage(uri), "run-1", {contract.ENV_WRITER_ID: job})
        leases.append(WriterLease(_InStep(lease.storage, read, wrote), lease.run_uri, lease.me, settle=0.0))
    decisions: dict[int, object] = {}
    go = threading.Barrier(len(leases))

    def acquire(i: int) -> None:
        go.wait()
        decisions[i] = leases[i].acquire()

    threads = [threading.Thread(target=acquire, args=(i,)) for i in range(len(leases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, d in decisions.items() if d.take]
    assert len(winners) == 1, {i: d.reason for i, d in decisions.items()}
    held = leases[winners[0]].read()
    assert held is not None and held.token == leases[winners[0]].me.token
    for i, d in decisions.items():
        if i not in winners:
            assert f"is being written by {held.holder}" in d.reason
    for lease in leases:
        lease.release()
    assert WriterLease.for_run(open_storage(uri), "run-1", {}).read() is None
