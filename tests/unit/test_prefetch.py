"""The ranks' side of the supervisor's prefetch (trainer/checkpoint/prefetch.py); the whole of it runs
against moto in tests/storage/test_s3_checkpoints.py."""

from __future__ import annotations

import os
import threading
import time

from trainer import contract
from trainer.checkpoint import prefetch

SHA = "ab" * 32


def test_without_a_prefetch_folder_there_is_nothing_to_wait_for():
    assert prefetch.prefetched(SHA, {}, 10) is None


def test_a_rank_waits_while_the_download_is_pending_and_gets_the_file(tmp_path):
    (tmp_path / prefetch.PENDING).touch()

    def supervisor():
        time.sleep(0.2)
        (tmp_path / SHA).write_bytes(b"state")
        (tmp_path / prefetch.PENDING).unlink()

    threading.Thread(target=supervisor).start()
    assert prefetch.prefetched(SHA, {contract.ENV_PREFETCH_DIR: str(tmp_path)}, 10) == str(tmp_path / SHA)


def test_another_step_than_the_prefetched_one_is_not_served(tmp_path):
    (tmp_path / SHA).write_bytes(b"state")  # done: no pending marker
    assert prefetch.prefetched("cd" * 32, {contract.ENV_PREFETCH_DIR: str(tmp_path)}, 10) is None


def test_a_failed_or_stuck_prefetch_leaves_the_rank_to_fetch_for_itself(tmp_path):
    env = {contract.ENV_PREFETCH_DIR: str(tmp_path)}
    assert prefetch.prefetched(SHA, env, 10) is None  # failed: the marker went, no file came
    (tmp_path / prefetch.PENDING).touch()
    assert prefetch.prefetched(SHA, env, 0.05) is None  # still pending after the rank's patience


def test_a_spool_that_cannot_be_written_means_no_prefetch_not_a_crash(tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv(contract.ENV_SPOOL_DIR, str(blocked / "spool"))
    assert prefetch.Prefetch("s3://bucket/ckpts", "run").start() is None


def test_a_local_checkpoint_folder_is_never_prefetched(tmp_path):
    assert prefetch.Prefetch(str(tmp_path), "run").start() is None
    assert prefetch.Prefetch(f"file://{tmp_path}", "run").start() is None


def test_folders_of_killed_supervisors_are_swept_at_start_and_live_ones_kept(tmp_path, monkeypatch):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live_tag = prefetch.owner_tag(child.pid)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        dead_pid = int(dead.stdout)
        ns = live_tag.split("-")[0]
        names = {
            "mine": f"{prefetch.FOLDER_PREFIX}{prefetch.owner_tag()}-abc_12",
            "live": f"{prefetch.FOLDER_PREFIX}{live_tag}-x1y2z3",
            "dead": f"{prefetch.FOLDER_PREFIX}{ns}-{dead_pid}-12345-q9w8e7",
            "reused pid": f"{prefetch.FOLDER_PREFIX}{ns}-{child.pid}-1-r5t6y7",  # same PID, another start
            "other namespace": f"{prefetch.FOLDER_PREFIX}1{ns}-{dead_pid}-12345-u1i2o3",
            "no owner in its name": f"{prefetch.FOLDER_PREFIX}k3j4h5g6",
            "not ours": "fetch-abcdef",
        }
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / SHA).write_bytes(b"state")
        swept = prefetch.sweep_spool(str(tmp_path))
        assert sorted(swept) == sorted([names["dead"], names["reused pid"]])
        assert sorted(os.listdir(tmp_path)) == sorted(v for k, v in names.items() if k not in ("dead", "reused pid"))
    finally:
        child.kill()
        child.wait()


def test_a_prefetch_folder_is_named_by_its_owner_and_sweeps_the_spool(tmp_path, monkeypatch):
    monkeypatch.setenv(contract.ENV_SPOOL_DIR, str(tmp_path))
    (tmp_path / f"{prefetch.FOLDER_PREFIX}{prefetch.owner_tag().split('-')[0]}-999999999-5-left").mkdir()
    p = prefetch.Prefetch("s3://bucket/ckpts", "run")
    monkeypatch.setattr(prefetch.Prefetch, "_run", lambda self: None)
    folder = p.start()
    try:
        assert os.listdir(tmp_path) == [os.path.basename(folder)]
        assert prefetch.parse_owner(os.path.basename(folder))[1] == os.getpid()
    finally:
        p.close()
