"""The first save's stall: its host buffers are allocated ahead, off the training thread."""

from __future__ import annotations

import pytest
import torch

from trainer.checkpoint import Checkpointer

pytestmark = pytest.mark.runtime  # a real Checkpointer and torch: the runtime tier, not unit


def _pointers(ckpt: Checkpointer) -> dict:
    return {path: t.data_ptr() for path, t in ckpt._saver.buffers["replicated"].items()}


def test_the_first_step_end_preallocates_what_the_first_save_copies_into(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    opt.step()  # Adam builds its state lazily: it exists only after a step
    ckpt = Checkpointer(model, opt, uri=str(tmp_path), run_id="r", every_steps=1000)
    ckpt.step_end(1)
    ckpt._saver.allocator.join()
    before = _pointers(ckpt)
    assert any(path[0] == "optimizer" for path in before), "the optimizer's state was not preallocated"
    assert sum(1 for path in before if path[0] == "model") == 4
    ckpt.save(2)
    ckpt.wait()
    assert _pointers(ckpt) == before, "the first save allocated instead of reusing the preallocated buffers"
    restored = Checkpointer(model, opt, uri=str(tmp_path), run_id="r")
    assert restored.restore() == 2
    ckpt.close()
    restored.close()
