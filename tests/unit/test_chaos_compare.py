"""compare.StepComparisons: steps compared as each attempt left them, on real checkpoint folders."""

import os
import random
import shutil

import torch

from kubetrain_chaos import compare, oracle
from kubetrain_chaos.record import FaultRecord, RunRecord
from trainer import contract
from trainer.checkpoint import layout
from trainer.storage import file_info


def write_step(run_dir: str, step: int, weight: float, rng_word: int) -> None:
    """A one-rank step: the weights in state.pt, an RNG stream in the rank file, then the manifest."""
    folder = os.path.join(run_dir, contract.step_dir_name(step))
    os.makedirs(folder, exist_ok=True)
    torch.save({"model": torch.tensor([weight])}, os.path.join(folder, contract.REPLICATED_FILE))
    torch.save({"rng": {"python": (3, (rng_word,) * 4, None)}}, os.path.join(folder, contract.rank_file(0)))
    files = {name: file_info(os.path.join(folder, name)) for name in (contract.REPLICATED_FILE, contract.rank_file(0))}
    m = layout.Manifest(step=step, world_size=1, kind="replicated", files=files, created=1.0)
    with open(os.path.join(folder, contract.MANIFEST_NAME), "wb") as f:
        f.write(layout.manifest_to_bytes(m))


def test_a_pre_fault_step_pruned_later_still_tells_an_unseeded_rng_from_a_resume_bug(tmp_path):
    # CI, seed 778764535: a kill-during-upload's small --keep pruned step 20, the one step both
    # runs had before the first fault; compared only at the end, the script's unseeded `random`
    # read as a resume bug at step 140. Compared as the first attempt left it, it is named as noise.
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    for step in (20, 140):
        write_step(ref, step, weight=step, rng_word=1)
    write_step(run, 20, weight=20, rng_word=2)  # the faulted run's own process: another entropy seed
    seen = compare.StepComparisons(ref, run, tolerance=None)
    seen.update(damaged=set())  # the first attempt ends (a SIGTERM at step 36)
    shutil.rmtree(os.path.join(run, contract.step_dir_name(20)))  # pruned by a later commit
    write_step(run, 140, weight=140, rng_word=2)
    seen.update(damaged=set())

    found = seen.result(damaged=set())
    assert sorted(found) == [20, 140]
    assert set(found[20]) == set(found[140]) == {f"{contract.rank_file(0)}:rng.python"}
    record = RunRecord(seed=1, tolerance=None, reference_steps=140, reference_seconds=1.0, epoch_steps=None,
                       thorough=False, faults_asked=1, reference_committed=[20, 140],
                       faults=[FaultRecord("sigterm", number=1, at_step=33, injected_at=36)], final_code=0,
                       final_latest=140, run_committed=[140], comparisons=found, workdir=str(tmp_path))
    check = next(c for c in oracle.verdict(record) if c.name == "identical state")
    assert check.ok, check.detail
    assert "rng.python" in check.detail


def test_a_step_written_anew_is_compared_again_and_a_damaged_step_never(tmp_path):
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    for step in (40, 60):
        write_step(ref, step, weight=step, rng_word=1)
    write_step(run, 40, weight=40, rng_word=1)
    write_step(run, 60, weight=60, rng_word=1)
    seen = compare.StepComparisons(ref, run, tolerance=None)
    seen.update(damaged=set())
    assert seen.result(set()) == {40: {}, 60: {}}
    write_step(run, 40, weight=41, rng_word=1)  # a later attempt redid step 40, wrongly
    seen.update(damaged={60})
    found = seen.result(damaged={60})
    assert list(found) == [40] and list(found[40]) == [f"{contract.REPLICATED_FILE}:model"]
