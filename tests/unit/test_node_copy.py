"""The node copy (trainer/checkpoint/node_copy.py): content addressing, the prune, the bound, a corrupt or
half-written copy passed over, a stale one never used; save and restore through it on memory://."""

from __future__ import annotations

import logging
import os
import subprocess
import uuid

import pytest
import torch

from trainer.checkpoint import Checkpointer, node_copy
from trainer.processes import owner_tag
from trainer.storage import FileInfo, file_info


def node(tmp_path, max_bytes=1 << 20) -> node_copy.NodeCopy:
    return node_copy.NodeCopy(str(tmp_path / "nc"), max_bytes)


def incoming_with(n: node_copy.NodeCopy, data: bytes) -> tuple[str, FileInfo]:
    path = node_copy.incoming(n)
    with open(path, "wb") as f:
        f.write(data)
    return path, file_info(path)


def test_a_kept_file_is_named_by_its_sha256_and_the_previous_step_goes(tmp_path):
    n = node(tmp_path)
    a, b = incoming_with(n, b"step one"), incoming_with(n, b"step two")
    node_copy.keep(n, 1, [a])
    assert node_copy.verified(n, a[1], "state.pt") == os.path.join(n.dir, "step-1", a[1].sha256)
    assert not os.path.exists(a[0])  # the incoming name went
    node_copy.keep(n, 2, [b])
    assert sorted(os.listdir(n.dir)) == [".lock", "step-2"]
    assert node_copy.verified(n, a[1], "state.pt") is None
    assert node_copy.kept_bytes(n) == len(b"step two")


def test_a_file_kept_under_an_older_step_moves_with_the_same_bytes(tmp_path):
    n = node(tmp_path)
    a = incoming_with(n, b"unchanged")
    node_copy.keep(n, 1, [a])
    kept = node_copy.verified(n, a[1], "rank-0.pt")
    node_copy.keep(n, 2, [(kept, a[1])])
    assert node_copy.verified(n, a[1], "rank-0.pt") == os.path.join(n.dir, "step-2", a[1].sha256)


def test_the_bound_admits_files_in_order_while_they_fit():
    files = [("a", FileInfo(60, "a" * 64)), ("b", FileInfo(50, "b" * 64)), ("c", FileInfo(40, "c" * 64))]
    assert node_copy.admit({}, files, 100) == [0, 2]
    assert node_copy.admit({"a" * 64: 60}, files, 100) == [2]  # already there, and b would not fit
    assert node_copy.admit({}, files, 10) == []


def test_a_step_larger_than_the_bound_keeps_nothing(tmp_path):
    n = node(tmp_path, max_bytes=4)
    a = incoming_with(n, b"more than four bytes")
    node_copy.keep(n, 1, [a])
    assert node_copy.kept_bytes(n) == 0 and not os.path.exists(a[0])


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_damaged_copy_is_passed_over_and_removed(tmp_path, damage):
    n = node(tmp_path)
    a = incoming_with(n, b"the real bytes")
    node_copy.keep(n, 1, [a])
    path = os.path.join(n.dir, "step-1", a[1].sha256)
    with open(path, "r+b") as f:
        if damage == "corrupt":
            f.write(b"THE")
        else:
            f.truncate(5)
    assert node_copy.verified(n, a[1], "state.pt") is None
    assert not os.path.exists(path)


def test_a_half_written_file_is_never_looked_up(tmp_path):
    n = node(tmp_path)
    path, info = incoming_with(n, b"half")  # an incoming name: a write still under way, or a kill's
    assert node_copy.find(n, info) is None and node_copy.verified(n, info, "state.pt") is None


def test_a_dead_writers_incoming_file_is_swept_and_a_live_ones_stays(tmp_path):
    n = node(tmp_path)
    live, _ = incoming_with(n, b"mine")
    child = subprocess.Popen(["true"])
    child.wait()
    dead = os.path.join(n.dir, f"{node_copy.INCOMING}{owner_tag().split('-')[0]}-"
                               f"{child.pid}-1-abcd")
    open(dead, "wb").close()
    node_copy.keep(n, 1, [])
    assert os.path.exists(live) and not os.path.exists(dead)


def test_a_retried_upload_leaves_only_its_last_attempt(tmp_path):
    n = node(tmp_path)
    attempts: list[str] = []
    write = node_copy.teed(n, lambda f: f.write(b"bytes"), attempts)
    for _ in range(3):
        sink = open(os.devnull, "wb")
        write(sink)
        sink.close()
    last = node_copy.last_complete(attempts)
    assert [p for p in os.listdir(n.dir) if p.startswith(node_copy.INCOMING)] == [os.path.basename(last)]
    with open(last, "rb") as f:
        assert f.read() == b"bytes"


def test_a_file_larger_than_the_bound_is_not_written_beside_the_upload(tmp_path):
    n = node(tmp_path, max_bytes=8)
    attempts: list[str] = []
    with open(tmp_path / "upload", "wb") as sink:
        node_copy.teed(n, lambda f: [f.write(b"12345"), f.write(b"67890")], attempts)(sink)
    assert attempts == [] and (tmp_path / "upload").read_bytes() == b"1234567890"
    assert [p for p in os.listdir(n.dir) if p.startswith(node_copy.INCOMING)] == []


def test_a_local_store_has_no_node_copy_and_zero_turns_it_off(tmp_path):
    assert node_copy.for_run(str(tmp_path / "run"), base=None, max_bytes=1 << 30, store_is_local=True) is None
    assert node_copy.for_run("s3://b/c/run", base=None, max_bytes=0, store_is_local=False) is None
    n = node_copy.for_run("s3://b/c/run", base=str(tmp_path), max_bytes=1, store_is_local=False)
    assert n is not None and os.path.basename(n.dir).startswith("run-")
    assert n != node_copy.for_run("s3://other/c/run", base=str(tmp_path), max_bytes=1, store_is_local=False)


# --- through the Checkpointer, on memory:// (a store that is not this node's disk) -----------------------


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETRAIN_SPOOL_DIR", str(tmp_path / "spool"))
    return f"memory://nc-{uuid.uuid4().hex[:8]}"


def checkpointer(uri, tmp_path, seed=None, **kw) -> tuple[Checkpointer, torch.nn.Linear]:
    if seed is not None:
        torch.manual_seed(seed)
    model = torch.nn.Linear(8, 8)
    return Checkpointer(model, uri=uri, run_id="r", node_copy_dir=str(tmp_path / "nc"), **kw), model


def sources(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("restore: rank")]


def test_a_second_restore_on_the_node_reads_the_node_copy_with_the_same_state(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kubetrain")
    ck, saved = checkpointer(store, tmp_path, seed=1)
    ck.save(3, blocking=True)
    ck2, got = checkpointer(store, tmp_path, seed=2)
    assert ck2.restore() == 3
    assert sources(caplog) == ["restore: rank 0: step 3 from the node copy"]
    assert torch.equal(got.weight, saved.weight)
    # Corrupt the kept state: the next restore passes it over for the store, and keeps the store's again.
    kept = os.path.join(ck.run.node.dir, "step-3")
    for name in os.listdir(kept):
        with open(os.path.join(kept, name), "r+b") as f:
            f.write(b"\0" * 8)
    ck3, again = checkpointer(store, tmp_path, seed=3)
    assert ck3.restore() == 3
    assert sources(caplog)[-1] == f"restore: rank 0: step 3 from {store}"
    assert torch.equal(again.weight, saved.weight)
    assert checkpointer(store, tmp_path)[0].restore() == 3
    assert sources(caplog)[-1] == "restore: rank 0: step 3 from the node copy"


def test_a_copy_of_an_older_step_is_not_used_when_latest_names_a_newer(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kubetrain")
    ck, model = checkpointer(store, tmp_path, seed=1)
    ck.save(1, blocking=True)
    with torch.no_grad():
        model.weight.add_(1.0)
    Checkpointer(model, uri=store, run_id="r", node_copy_max_bytes=0).save(2, blocking=True)  # not kept here
    assert sorted(os.listdir(ck.run.node.dir)) == [".lock", "step-1"]
    ck2, got = checkpointer(store, tmp_path, seed=5)
    assert ck2.restore() == 2
    assert sources(caplog)[-1] == f"restore: rank 0: step 2 from {store}"
    assert torch.equal(got.weight, model.weight)
    assert sorted(os.listdir(ck.run.node.dir)) == [".lock", "step-2"]  # the restore kept what it fetched


def test_the_supervisor_does_not_prefetch_what_the_node_copy_holds(store, tmp_path):
    from trainer.checkpoint import prefetch

    checkpointer(store, tmp_path, seed=1)[0].save(4, blocking=True)
    into = tmp_path / "prefetch"
    into.mkdir()
    assert prefetch.fetch_latest(store, "r", str(into), node_copy=(str(tmp_path / "nc"), 1 << 20)) is None
    assert list(into.iterdir()) == []
    assert "state.pt" in prefetch.fetch_latest(store, "r", str(into), node_copy=(str(tmp_path / "elsewhere"), 1 << 20))
    assert len(list(into.iterdir())) == 1
