"""A run killed with N ranks and resumed with M: every sample of the epoch is consumed exactly once.

Real torchrun with gloo ranks. Rank 0 SIGKILLs itself at a fixed step after the
cadence's checkpoint committed, so the resume point is known without timing;
the steps recorded after that checkpoint are redone by the resumed run.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.helpers import FIXTURES, run
from trainer.checkpoint.resize import new_rank_seed

pytestmark = pytest.mark.runtime
SCRIPT = os.path.join(FIXTURES, "record_samples.py")
SAMPLES, BATCH = 96, 4


def records(folder: str) -> dict[int, list[tuple[int, int, list[int]]]]:
    """rank -> [(step, epoch, ids)] of each run segment, with 'restored' lines as (-1, step, [world])."""
    out = {}
    for name in os.listdir(folder):
        rank = int(re.fullmatch(r"rank-(\d+)\.txt", name).group(1))
        rows = []
        for line in open(os.path.join(folder, name)):
            head, *rest = line.split()
            if head == "restored":
                rows.append((-1, int(rest[0]), [int(rest[1])]))
            else:
                rows.append((int(head), int(rest[0]), [int(i) for i in rest[1:]]))
        out[rank] = rows
    return out


def consumed_ids(first: str, second: str, resumed_from: int) -> list[int]:
    """Ids of epoch 0 consumed by the steps that count: the first run's up to the resume point, then the second's."""
    ids = []
    for folder, keep in ((first, lambda s: s <= resumed_from), (second, lambda s: s > resumed_from)):
        for rows in records(folder).values():
            ids += [i for step, epoch, batch in rows if step > 0 and keep(step) and epoch == 0 for i in batch]
    return ids


@pytest.mark.parametrize("before,after,every,kill_at,workers", [
    (2, 1, 3, 5, 0),   # resumes from 3: 24 samples seen, 72 left for 1 rank
    (2, 3, 3, 5, 2),   # 72 left for 3 ranks, DataLoader workers prefetching past the kill
    (4, 2, 2, 3, 0),   # resumes from 2: 32 seen, 64 left for 2 ranks
], ids=["2to1", "2to3-workers", "4to2"])
def test_a_resume_with_other_ranks_consumes_every_sample_of_the_epoch_once(tmp_path, before, after, every,
                                                                           kill_at, workers):
    ckpt = str(tmp_path / "ck")
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    seen = every * before * BATCH
    steps_after = (SAMPLES - seen) // (after * BATCH)  # exactly the rest of epoch 0, then one step of epoch 1
    common = ["--checkpoint", ckpt, "--run-id", "resize"]
    r = run(["--nproc-per-node", str(before), *common, SCRIPT, "--steps", "100", "--every", str(every),
             "--kill-at", str(kill_at), "--workers", str(workers), "--record", first])
    assert r.returncode != 0, r.stdout + r.stderr  # the kill ended it
    assert int(open(os.path.join(ckpt, "resize", "latest")).read()) == every

    r = run(["--nproc-per-node", str(after), *common, SCRIPT, "--steps", str(every + steps_after + 1),
             "--every", "1000", "--workers", str(workers), "--record", second])
    assert r.returncode == 0, r.stdout + r.stderr
    ids = consumed_ids(first, second, every)
    assert sorted(ids) == list(range(SAMPLES)), "an id seen twice or never"

    log = r.stdout + r.stderr
    note = [line for line in log.splitlines() if f"was saved by {before} ranks, this run has {after}" in line]
    assert len(note) == 1 and "data position ('sampler') re-partitioned exactly" in note[0], log
    assert "NOT EXACT" not in note[0]
    rows = records(second)
    assert sorted(rows) == list(range(after))
    for rank, rank_rows in rows.items():
        assert rank_rows[0][:2] == (-1, every)  # every rank of the new run restored the same step
        last_step, last_epoch, _ = rank_rows[-1]
        assert (last_step, last_epoch) == (every + steps_after + 1, 1)  # all ranks moved on to epoch 1 together


def test_a_rank_that_did_not_exist_draws_from_the_documented_seed(tmp_path):
    ckpt = str(tmp_path / "ck")
    common = ["--checkpoint", ckpt, "--run-id", "resize", SCRIPT, "--every", "2"]
    assert run(["--nproc-per-node", "1", *common, "--steps", "2", "--record", str(tmp_path / "a")]).returncode == 0
    r = run(["--nproc-per-node", "2", *common, "--steps", "3", "--record", str(tmp_path / "b")])
    assert r.returncode == 0, r.stdout + r.stderr
    import torch

    torch.manual_seed(new_rank_seed(100 + 1, 1, 2))  # the fixture seeds 100 + rank before restore()
    expected = torch.rand(()).item()
    line = open(tmp_path / "b" / "rank-1.txt").readline().split()
    assert line[:3] == ["restored", "2", "2"] and float(line[3]) == expected
    assert "of rank 1 seeded by new_rank_seed(initial seed, rank, step)" in r.stdout + r.stderr
