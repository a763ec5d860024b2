"""The node copy against moto's S3 server: a second restore on the same node reads no state from S3,
a corrupted node copy falls back to S3, and an in-place restart after a SIGKILLed rank restores from it."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import torch

from tests.helpers import EXAMPLE, assert_no_workers, read_json, start, wait_for
from tests.storage.test_s3_checkpoints import latest, state_gets
from trainer import contract
from trainer.checkpoint import Checkpointer
from trainer.control_folder import RankPid

pytestmark = pytest.mark.storage


@pytest.fixture
def node_copy_on(s3_env, monkeypatch, tmp_path):
    """The node copy on, in this test's spool (the conftest turns it off for the other storage tests).
    Set, as the supervisor sets it under --in-place-restarts: unset, a bare Checkpointer keeps none."""
    on = str(contract.DEFAULT_NODE_COPY_MAX_BYTES)
    monkeypatch.setenv(contract.ENV_NODE_COPY_MAX_BYTES, on)
    s3_env["env"][contract.ENV_NODE_COPY_MAX_BYTES] = on
    monkeypatch.setenv(contract.ENV_SPOOL_DIR, str(tmp_path / "spool"))
    s3_env["env"][contract.ENV_SPOOL_DIR] = str(tmp_path / "spool")
    return s3_env


def restore_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("restore: rank")]


def test_a_second_restore_on_the_node_reads_the_node_copy_and_a_corrupt_one_reads_s3(
        node_copy_on, fault_proxy, caplog):
    caplog.set_level(logging.INFO, logger="kubetrain")
    fault_proxy.rate = 0.0  # a plain proxy: it records the GETs that reach the server
    uri = f"s3://{node_copy_on['bucket']}/ckpts"
    torch.manual_seed(0)
    saved = torch.nn.Linear(256, 256)
    ck = Checkpointer(saved, uri=uri, run_id="exp")
    ck.save(7, blocking=True)
    fault_proxy.forwarded.clear()

    torch.manual_seed(1)
    first = torch.nn.Linear(256, 256)
    assert Checkpointer(first, uri=uri, run_id="exp").restore() == 7
    assert restore_lines(caplog) == ["restore: rank 0: step 7 from the node copy"]
    assert torch.equal(first.weight, saved.weight) and torch.equal(first.bias, saved.bias)
    assert state_gets(fault_proxy, node_copy_on) == []  # only `latest`, the listing and the manifest

    kept = os.path.join(ck.run.node.dir, "step-7")
    for name in os.listdir(kept):  # a bit flipped on the node's disk
        with open(os.path.join(kept, name), "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
    torch.manual_seed(2)
    second = torch.nn.Linear(256, 256)
    assert Checkpointer(second, uri=uri, run_id="exp").restore() == 7
    assert restore_lines(caplog)[-1] == f"restore: rank 0: step 7 from {uri}"
    assert "node copy of state.pt at" in caplog.text and "removed, reading the store" in caplog.text
    assert torch.equal(second.weight, saved.weight)
    assert state_gets(fault_proxy, node_copy_on) == [7]


def test_an_in_place_restart_restores_from_the_node_copy(tmp_path, node_copy_on):
    s3_env = node_copy_on
    control, log, result = str(tmp_path / "control"), str(tmp_path / "log"), str(tmp_path / "result.json")
    node = tmp_path / "node"
    proc = start(["--nproc-per-node", "2", "--checkpoint", f"s3://{s3_env['bucket']}/ckpts", "--run-id", "exp",
                  "--checkpoint-every-steps", "20", "--grace-seconds", "10", "--in-place-restarts", "1",
                  "--node-copy-dir", str(node), EXAMPLE, "--steps", "60", "--samples", "2048", "--hidden", "64",
                  "--step-sleep", "0.1", "--result", result],
                 env={**s3_env["env"], contract.ENV_CONTROL_DIR: control}, log_path=log)

    def both_ranks_kept_the_latest() -> bool:
        # Killed between saves, not while a commit's outcome is broadcast (CI once killed rank 1 there, so
        # no rank kept the step `latest` already named): state.pt, rank-00000.pt, rank-00001.pt kept.
        step = latest(s3_env)
        return step is not None and any(len(os.listdir(d)) >= 3 for d in node.glob(f"*/step-{step}"))

    wait_for(both_ranks_kept_the_latest, 180, "the first checkpoint in S3 and on the node")
    wait_for(lambda: 1 in RankPid.live(control), 60, "rank 1's pid")
    os.kill(RankPid.live(control)[1], signal.SIGKILL)
    assert proc.wait(300) == 0, open(log).read()[-4000:]
    out = open(log).read()
    after = out[out.index("restarting in place (1 of 1)"):]
    resumed = read_json(result)["resumed_from"]
    assert f"restore: rank 0: step {resumed} from the node copy" in after, after[-4000:]
    assert (f"restore: rank 1: step {resumed} from local rank 0's copy (state.pt) and the node copy "
            "(rank-00001.pt)") in after, after[-4000:]
    assert_no_workers(result)
