"""The pod's control folder (trainer/control_folder.py): each record reads back what was written,
a missing or half-written file reads as nothing, and every write replaces its file whole."""

from __future__ import annotations

import os

import pytest

from trainer.control_folder import (Committed, Preempted, Progress, RankError, RankFailure, RankPid, StopRequest,
                                    TorchrunResult)


def test_each_single_file_record_reads_back_what_was_written(tmp_path):
    folder = str(tmp_path)
    records = [StopRequest("SIGTERM"), Committed(120, 1.5), Preempted(140, 2.5),
               TorchrunResult((RankFailure(1, -9, 3.0, "SIGKILL"), RankFailure(0, 1, 4.0))),
               TorchrunResult(usage_error="argument --node-rank: invalid int")]
    for record in records:
        record.write(folder)
        assert type(record).read(folder) == record


def test_each_per_rank_record_reads_back_by_rank(tmp_path):
    folder = str(tmp_path)
    for rank in (0, 1, 10):
        Progress(rank, 5 + rank, 100.0 + rank).write(folder)
        RankPid(rank, 4000 + rank, 77).write(folder)
        RankError(rank=rank, type="ValueError", message="m", time=rank, comm_error=rank == 1).write(folder)
    assert Progress.read_all(folder) == {r: Progress(r, 5 + r, 100.0 + r) for r in (0, 1, 10)}
    assert RankPid.read_all(folder) == {r: RankPid(r, 4000 + r, 77) for r in (0, 1, 10)}
    assert [(e.rank, e.comm_error) for e in RankError.read_all(folder)] == [(0, False), (1, True), (10, False)]


@pytest.mark.parametrize("name,text", [
    ("stop", None), ("committed", "12"), ("committed", "x 1.0"), ("preempted.json", "{"),
    ("preempted.json", "[]"), ("result.json", '{"failures": [{"rank": 1}]}'),
], ids=["absent", "one-field", "not-a-number", "half-json", "not-an-object", "failure-without-exitcode"])
def test_a_missing_or_broken_file_reads_as_nothing(tmp_path, name, text):
    if text is not None:
        (tmp_path / name).write_text(text)
    record = {"stop": StopRequest, "committed": Committed, "preempted.json": Preempted,
              "result.json": TorchrunResult}[name]
    assert record.read(str(tmp_path)) is None


def test_per_rank_files_skip_temps_broken_files_and_other_names(tmp_path):
    for name, text in [("progress-rank-0", "3 1.0\n"), ("progress-rank-1.tmp", "4 2.0\n"), ("progress-rank-2", "4"),
                       ("progress-rank-x", "1 1.0"), ("error-rank-0.json", "{"), ("error-rank-1.json.tmp", "{}")]:
        (tmp_path / name).write_text(text)
    assert Progress.read_all(str(tmp_path)) == {0: Progress(0, 3, 1.0)}
    assert RankError.read_all(str(tmp_path)) == []
    assert Progress.read_all(str(tmp_path / "gone")) == {}


def test_every_write_replaces_its_file_whole_and_leaves_no_temp(tmp_path):
    folder = str(tmp_path)
    Preempted(10, 1.0).write(folder)
    Preempted(20, 2.0).write(folder)  # was written in place: a reader could see half of it
    StopRequest("SIGTERM").write(folder)
    assert StopRequest.exists(folder) and Preempted.read(folder) == Preempted(20, 2.0)
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_a_rank_pid_is_live_only_while_the_same_process_runs(tmp_path):
    folder = str(tmp_path)
    RankPid.of_this_process(3).write(folder)
    mine = RankPid.read_all(folder)[3]
    RankPid(4, mine.pid, mine.started + 1).write(folder)  # the same PID, reused by a later process
    assert RankPid.live(folder) == {3: os.getpid()}


def test_rank_stats_read_back_and_a_broken_one_reads_as_that_rank_left_out(tmp_path):
    from trainer.control_folder import CheckpointEvent, RankStats

    stats = RankStats(3, (CheckpointEvent(1, "restore", None, 1.0, seconds=0.5, source="none"),
                          CheckpointEvent(2, "save", 20, 2.0, stall_s=0.1, upload_s=0.3, bytes=99)), {"server": 2})
    stats.write(str(tmp_path))
    (tmp_path / "stats-rank-4.json").write_text('{"rank": 4, "events": [{"seq": 1}]}')
    assert RankStats.read_all(str(tmp_path)) == {3: stats}
