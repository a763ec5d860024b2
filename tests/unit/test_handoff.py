"""The node-local handoff of one download to a node's other ranks (trainer/checkpoint/handoff.py)."""

from __future__ import annotations

import threading

import pytest

from trainer import contract
from trainer.checkpoint import handoff


@pytest.fixture
def spool(tmp_path, monkeypatch):
    monkeypatch.setenv(contract.ENV_SPOOL_DIR, str(tmp_path))
    return tmp_path


def test_a_node_with_one_rank_shares_nothing(spool):
    assert handoff.node_prefix("t", {"LOCAL_WORLD_SIZE": "1"}) is None
    assert handoff.node_prefix("t", {}) is None


def test_the_prefix_names_the_restore_and_the_node(spool):
    a = handoff.node_prefix("t1", {"LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"})
    assert a is not None and a.startswith(str(spool))
    assert a != handoff.node_prefix("t1", {"LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"})  # nodes sharing a machine
    assert a != handoff.node_prefix("t2", {"LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"})  # an earlier attempt


def test_a_waiting_rank_gets_the_published_file(spool):
    src, dest = spool / "download", str(spool / "shared")
    src.write_bytes(b"state")
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(handoff.wait_for(dest, 10)))
    waiter.start()
    handoff.publish(str(src), dest)
    waiter.join(10)
    assert got == [dest] and open(dest, "rb").read() == b"state"
    src.unlink()  # the download's temp file goes; the handed-off name stays until remove()
    assert open(dest, "rb").read() == b"state"
    handoff.remove(dest)
    assert list(spool.iterdir()) == []


def test_a_waiting_rank_gets_local_rank_0s_reason(spool):
    dest = str(spool / "shared")
    handoff.publish_failure(dest, "state.pt fails its sha256 check (corrupt)")
    with pytest.raises(handoff.HandoffFailed, match="sha256"):
        handoff.wait_for(dest, 10)
    handoff.remove(dest)
    assert list(spool.iterdir()) == []


def test_a_failure_after_publishing_does_not_hide_the_file(spool):
    src, dest = spool / "download", str(spool / "shared")
    src.write_bytes(b"state")
    handoff.publish(str(src), dest)
    handoff.publish_failure(dest, "rank-0.pt is missing")  # a later file failed; the shared one is good
    assert handoff.wait_for(dest, 1) == dest


def test_waiting_ends_with_an_error_when_nothing_comes(spool):
    with pytest.raises(handoff.HandoffFailed, match="did not provide"):
        handoff.wait_for(str(spool / "shared"), 0.05)
