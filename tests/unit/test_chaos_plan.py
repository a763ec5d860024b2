"""`launch chaos`: the pure parts (fault plans, state diffs, the command line) and its one-line errors."""

from __future__ import annotations

import random

import pytest
import torch

from kubetrain_chaos import compare, plan as chaos
from launcher.chaos.command import parse_duration
from launcher.cli import main
from tests.helpers import EXAMPLE
from trainer import contract


@pytest.mark.parametrize("seed", range(20))
def test_a_plan_is_reproducible_spread_after_the_first_checkpoint_and_covers_every_kind(seed):
    plan = chaos.plan_faults(5, contract.CHAOS_KINDS, total_steps=200, every_steps=20, rng=random.Random(seed))
    assert plan == chaos.plan_faults(5, contract.CHAOS_KINDS, 200, 20, random.Random(seed))
    steps = [f.at_step for f in plan]
    assert steps == sorted(set(steps)) and all(30 <= s < 190 for s in steps)
    assert sorted(f.kind for f in plan) == sorted(contract.CHAOS_KINDS)


def test_a_short_run_gets_as_many_faults_as_it_has_steps_for():
    plan = chaos.plan_faults(10, ("sigterm",), total_steps=8, every_steps=20, rng=random.Random(0))
    assert 1 <= len(plan) <= 8 and all(f.kind == "sigterm" for f in plan)


def test_state_diffs_name_every_differing_leaf_and_honour_the_tolerance():
    a = {"model": {"w": torch.ones(3)}, "rng": (3, [1, 2]), "step": 5}
    b = {"model": {"w": torch.tensor([1.0, 1.0, 1.001])}, "rng": (3, [1, 7]), "step": 5}
    assert dict(compare.diff_states(a, b, None)) == {
        "model.w": "max |resumed - reference| 0.001",
        "rng.1.1": "7 (resumed) vs 2 (uninterrupted reference)"}
    assert dict(compare.diff_states(a, b, 0.01)) == {"rng.1.1": "7 (resumed) vs 2 (uninterrupted reference)"}
    assert dict(compare.diff_states(a, a, None)) == {}
    nan = {"x": torch.tensor([float("nan")])}
    assert dict(compare.diff_states(nan, nan, None)) == {}


def test_a_scheduler_left_out_says_which_side_is_the_reference():
    ref = {"optimizer": {"param_groups": [{"lr": 0.05}]}}
    run = {"optimizer": {"param_groups": [{"lr": 0.025}]}}
    assert dict(compare.diff_states(ref, run, None)) == {
        "optimizer.param_groups.0.lr": "0.025 (resumed) vs 0.05 (uninterrupted reference)"}


def test_differences_are_ordered_by_what_to_fix_first():
    keys = ["rank-00000.pt:rng.torch", "state.pt:model.0.weight", "rank-00000.pt:state.sampler.offset",
            "state.pt:step", "rank-00001.pt:state.noise.state", "state.pt:extra.ema.shadow.w", "dcp/__0_0.distcp"]
    assert compare.ordered(dict.fromkeys(keys, "x")) == [
        "state.pt:step", "rank-00000.pt:state.sampler.offset", "dcp/__0_0.distcp", "state.pt:extra.ema.shadow.w",
        "state.pt:model.0.weight", "rank-00000.pt:rng.torch", "rank-00001.pt:state.noise.state"]


def test_the_reproduce_line_replays_the_same_plan():
    plan = chaos.ChaosPlan(script=EXAMPLE, script_args=("--steps", "200"), seed=7, kinds=("sigterm",),
                           every_steps=10)
    assert chaos.reproduce_command(plan) == (f"launch chaos {EXAMPLE} --local --nproc 2 --faults 5 --seed 7 "
                                             "--kinds sigterm --checkpoint-every-steps 10 -- --steps 200")


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("2m", 120), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text, "--every") == seconds


@pytest.mark.parametrize("argv,needle", [
    (["chaos", "missing.py", "--local"], "does not exist"),
    (["chaos", EXAMPLE, "--local", "--kinds", "sigterm,meteor"], "unknown fault kind(s) meteor"),
    (["chaos", EXAMPLE, "--local", "--faults", "0"], "must be >= 1"),
    (["chaos", EXAMPLE, "--local", "--repeat", "0"], "--repeat must be >= 1"),
    (["chaos", EXAMPLE, "--local", "--kill-pod", "master"], "drop them or drop --local"),
    (["chaos", "myjob"], "say what to do"),
    (["chaos", "myjob", "--kill-pod", "worker-x"], "use random, master, worker-N (PyTorchJob) or node-N (TrainJob)"),
    (["chaos", "myjob", "--kill-pod", "master", "--every", "soon"], "not a duration"),
    (["chaos", "myjob", "--kill-pod", "master", "--drain-node"], "not allowed with argument"),
    (["chaos", "myjob", "--kill-pod", "master", "--", "x"], "arguments after `--` are for a script"),
])
def test_bad_input_is_one_line_and_exit_2_before_anything_runs(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_the_cli_defaults_are_the_plans():
    # The parser cannot import kubetrain_chaos (torch) to read them: this keeps the two in step.
    from launcher.chaos.command import build_parser

    args = build_parser().parse_args([EXAMPLE, "--local"])
    fields = chaos.ChaosPlan.__dataclass_fields__
    for flag, field in (("nproc", "nproc"), ("faults", "faults"), ("checkpoint_every_steps", "every_steps"),
                        ("grace_seconds", "grace_seconds"), ("timeout", "timeout"), ("tolerance", "tolerance")):
        assert getattr(args, flag) == fields[field].default, flag
