"""Restore never loads a partial or corrupt checkpoint (one process, real files)."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from trainer import contract
from trainer.checkpoint import Checkpointer
from trainer.errors import CheckpointError

pytestmark = pytest.mark.runtime


def make(tmp_path, **kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt, Checkpointer(model, opt, uri=str(tmp_path), run_id="r", every_steps=0, **kw)


def train_and_save(model, opt, ckpt, steps):
    weights = {}
    for step in steps:
        model(torch.randn(2, 8)).sum().backward()
        opt.step()
        ckpt.save(step, blocking=True)
        weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return weights


def step_path(tmp_path, step, name=""):
    return os.path.join(str(tmp_path), "r", contract.step_dir_name(step), name)


def corrupt_missing_manifest(tmp_path, step):
    os.unlink(step_path(tmp_path, step, contract.MANIFEST_NAME))


def corrupt_truncate(tmp_path, step):
    p = step_path(tmp_path, step, "state.pt")
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)


def corrupt_bitflip(tmp_path, step):
    p = step_path(tmp_path, step, "state.pt")
    data = bytearray(open(p, "rb").read())
    data[-100] ^= 0x10
    open(p, "wb").write(bytes(data))


def corrupt_missing_shard(tmp_path, step):
    os.unlink(step_path(tmp_path, step, "rank-00000.pt"))


def corrupt_manifest_garbage(tmp_path, step):
    open(step_path(tmp_path, step, contract.MANIFEST_NAME), "wb").write(b'{"format": 1, "st')


@pytest.mark.parametrize("corrupt,reason", [
    (corrupt_missing_manifest, "no manifest.json"),
    (corrupt_truncate, "(truncated?)"),
    (corrupt_bitflip, "fails its sha256 check"),
    (corrupt_missing_shard, "rank-00000.pt is missing"),
    (corrupt_manifest_garbage, "manifest.json is invalid"),
], ids=["missing-manifest", "truncated", "bit-flipped", "missing-file", "garbage-manifest"])
def test_restore_falls_back_to_the_previous_good_step_and_says_so(tmp_path, caplog, corrupt, reason):
    model, opt, ckpt = make(tmp_path, keep=5)
    weights = train_and_save(model, opt, ckpt, [10, 20])
    corrupt(tmp_path, 20)

    model2, opt2, ckpt2 = make(tmp_path, keep=5)
    with caplog.at_level(logging.INFO, logger="kubetrain"):
        assert ckpt2.restore() == 10
    assert reason in caplog.text and "falling back to step-000000010" in caplog.text
    for k, v in model2.state_dict().items():
        assert torch.equal(v, weights[10][k])


def test_a_step_whose_manifest_was_written_but_latest_did_not_move_is_not_committed(tmp_path):
    model, opt, ckpt = make(tmp_path)
    train_and_save(model, opt, ckpt, [10, 20])
    with open(os.path.join(str(tmp_path), "r", contract.LATEST_NAME), "w") as f:
        f.write("10\n")
    assert make(tmp_path)[2].restore() == 10  # `latest` names the committed step, never a newer one
    os.unlink(os.path.join(str(tmp_path), "r", contract.LATEST_NAME))
    assert make(tmp_path)[2].restore() == 0  # without `latest` nothing was committed


def test_nothing_usable_starts_from_zero(tmp_path):
    model, opt, ckpt = make(tmp_path)
    train_and_save(model, opt, ckpt, [10])
    corrupt_bitflip(tmp_path, 10)
    assert make(tmp_path)[2].restore() == 0


def test_old_steps_are_pruned_only_after_a_newer_one_committed(tmp_path):
    model, opt, ckpt = make(tmp_path, keep=2)
    train_and_save(model, opt, ckpt, [10, 20, 30])
    ckpt.wait()  # pruning runs after the commit, beside training
    names = sorted(os.listdir(os.path.join(str(tmp_path), "r")))
    assert names == ["latest", contract.step_dir_name(20), contract.step_dir_name(30)]


def test_async_save_snapshots_so_later_training_does_not_leak_into_the_checkpoint(tmp_path):
    model, opt, ckpt = make(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt.save(5)  # background
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ckpt.close()
    model2, _, ckpt2 = make(tmp_path)
    with torch.no_grad():
        for p in model2.parameters():
            p.zero_()
    assert ckpt2.restore() == 5
    for k, v in model2.state_dict().items():
        assert torch.equal(v, before[k])


def test_a_failed_upload_is_reported_leaves_latest_alone_and_raises_after_max_failures(tmp_path, caplog, monkeypatch):
    model, opt, ckpt = make(tmp_path, max_failures=2)
    train_and_save(model, opt, ckpt, [10])

    def broken(path, write):
        raise OSError("disk on fire")

    monkeypatch.setattr(ckpt.storage, "write_file", broken)
    with caplog.at_level(logging.ERROR, logger="kubetrain"):
        ckpt.save(20)
        ckpt.wait()
    assert "checkpoint step-000000020 failed" in caplog.text and "disk on fire" in caplog.text
    assert open(os.path.join(str(tmp_path), "r", contract.LATEST_NAME)).read().strip() == "10"
    ckpt.save(30)
    ckpt.wait()
    ckpt.step_end(31)  # training goes on between saves
    with pytest.raises(CheckpointError, match="2 checkpoints in a row failed.*disk on fire"):
        ckpt.save(40)


def test_scheduler_extra_and_rng_come_back(tmp_path):
    import random

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    class Counter:
        def __init__(self):
            self.n = 0

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, s):
            self.n = s["n"]

    c = Counter()
    ck = Checkpointer(model, opt, sched, extra={"counter": c}, uri=str(tmp_path), run_id="x")
    for _ in range(3):
        opt.step()
        sched.step()
    c.n = 42
    random.seed(7)
    torch.manual_seed(7)
    ck.save(3, blocking=True)
    expected = (random.random(), torch.rand(1))

    model2 = torch.nn.Linear(2, 2)
    opt2 = torch.optim.SGD(model2.parameters(), lr=1.0)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    c2 = Counter()
    assert Checkpointer(model2, opt2, sched2, extra={"counter": c2}, uri=str(tmp_path), run_id="x").restore() == 3
    assert c2.n == 42 and sched2.last_epoch == 3 and opt2.param_groups[0]["lr"] == 0.125
    assert (random.random(), torch.rand(1)) == expected


def test_any_fsspec_uri_works_memory_protocol(tmp_path):
    model, opt, ckpt = make(tmp_path)
    ckpt = Checkpointer(model, opt, uri="memory://kubetrain-test/ckpts", run_id="m", keep=1)
    weights = train_and_save(model, opt, ckpt, [3, 4])
    ckpt.wait()
    import fsspec

    fs = fsspec.filesystem("memory")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/kubetrain-test/ckpts/m", detail=False)) == \
        ["latest", contract.step_dir_name(4)]
    model2, opt2, _ = make(tmp_path)
    assert Checkpointer(model2, opt2, uri="memory://kubetrain-test/ckpts", run_id="m").restore() == 4
    for k, v in model2.state_dict().items():
        assert torch.equal(v, weights[4][k])
