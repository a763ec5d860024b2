"""A kill at each phase of a commit: restore takes exactly the step `latest` names, and no temp file stays.

trainer.contract ("checkpoint layout") defines it: a step is committed iff `latest` names it. A
process saves steps 10, 20 and 30 (keep=1, so each commit prunes) and SIGKILLs itself through the
FAULT_KILL_AT hook at one phase of one commit; a fresh Checkpointer then restores, and a commit
after it leaves the run folder clean. Deterministic: the kill is at a named point, not a time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from trainer import contract
from trainer.checkpoint import Checkpointer

pytestmark = pytest.mark.runtime

SAVER = textwrap.dedent("""
    import sys, torch
    from trainer.checkpoint import Checkpointer
    model = torch.nn.Linear(4, 2)
    ckpt = Checkpointer(model, uri=sys.argv[1], run_id="r", every_steps=0, keep=1)
    for step in (10, 20, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(step)  # the weights say which step they were saved at
        ckpt.save(step, blocking=True)
    ckpt.wait()
""")


def temp_files(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                  if ".tmp-" in f)


@pytest.mark.parametrize("phase,step,latest", [
    ("files", 30, 20),       # every file of 30 written, no manifest
    ("manifest", 30, 20),    # 30 has a valid manifest, but `latest` still names 20
    ("latest-tmp", 30, 20),  # `latest.tmp-*` holds 30, the rename never happened
    ("latest", 30, 30),      # `latest` replaced: 30 is committed
    ("prune", 30, 30),       # 20's manifest removed, its folder not yet
    ("manifest", 10, None),  # the first commit cut after its manifest: nothing is committed
    ("latest-tmp", 10, None),
], ids=lambda v: str(v))
def test_restore_takes_the_step_latest_names_after_a_kill_at_each_commit_phase(tmp_path, phase, step, latest):
    root, faults = str(tmp_path / "ckpt"), tmp_path / "faults"
    faults.mkdir()
    (faults / contract.FAULT_KILL_AT).write_text(f"{phase} {step}\n")
    env = {**os.environ, contract.ENV_FAULTS_DIR: str(faults), "WORLD_SIZE": "1"}
    for name in (contract.ENV_CONTROL_DIR, contract.ENV_CHECKPOINT_URI, contract.ENV_RUN_ID):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", SAVER, root], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run = os.path.join(root, "r")
    latest_path = os.path.join(run, contract.LATEST_NAME)
    on_disk = int(open(latest_path).read()) if os.path.exists(latest_path) else None
    assert on_disk == latest
    if phase == "latest-tmp":
        assert [f for f in temp_files(run) if f.startswith(contract.LATEST_NAME + ".tmp-")], temp_files(run)

    model = torch.nn.Linear(4, 2)
    ckpt = Checkpointer(model, uri=root, run_id="r", every_steps=0, keep=1)
    assert ckpt.restore() == (latest or 0)
    if latest is not None:
        assert all(torch.all(p == latest) for p in model.parameters())
    assert temp_files(run) == []  # the start removed what the kill left

    ckpt.save(40, blocking=True)
    ckpt.wait()
    assert int(open(latest_path).read()) == 40
    assert temp_files(run) == []
    assert sorted(os.listdir(run)) == sorted([contract.LATEST_NAME, contract.step_dir_name(40)])
