"""The ranks' side of the supervisor's prefetch (trainer/checkpoint/prefetch.py); the whole of it runs
against moto in tests/storage/test_s3_checkpoints.py."""

from __future__ import annotations

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
