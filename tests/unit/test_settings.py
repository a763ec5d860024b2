"""The one table of runtime settings (trainer/settings.py) and what is derived from it."""

from __future__ import annotations

import dataclasses

import pytest

from trainer import contract
from trainer.checkpoint.config import CheckpointConfig
from trainer.cli import build_parser
from trainer.errors import CheckpointError
from trainer.settings import SETTINGS, RunConfig, from_env, to_worker_env


def test_each_row_names_a_contract_variable_and_a_flag_once():
    envs = [s.env for s in SETTINGS]
    assert len(set(envs)) == len(envs) and all(getattr(contract, "ENV_" + e[len(contract.ENV_PREFIX):]) == e
                                               for e in envs)
    flags = [s.flag for s in SETTINGS]
    assert len(set(flags)) == len(flags)


def test_run_config_and_checkpoint_config_have_one_field_per_row():
    run_fields = {f.name for f in dataclasses.fields(RunConfig)} - {"script", "script_args"}
    assert run_fields == {s.field for s in SETTINGS} - {"code_uri", "code_sha256", "workdir"}
    ckpt_fields = {f.name for f in dataclasses.fields(CheckpointConfig)} - {"max_failures"}
    assert ckpt_fields == {s.checkpoint for s in SETTINGS if s.checkpoint}


def test_every_flag_is_on_the_command_line_with_its_variable_in_the_help():
    text = build_parser({}).format_help() + build_parser({})._subparsers._group_actions[0].choices["run"].format_help()
    for s in SETTINGS:
        assert s.flag in text and s.env in text


def test_what_the_supervisor_passes_on_is_what_a_rank_reads_back():
    cfg = RunConfig(script="x.py", checkpoint_uri="/c", run_id="r", every_steps=7, every_seconds=1.5, keep=2,
                    storage_timeout=9.0, warm_start_from="/other/run", warm_start_optimizer=True)
    back = CheckpointConfig.from_env(to_worker_env(cfg))
    assert back == CheckpointConfig(uri="/c", run_id="r", every_steps=7, every_seconds=1.5, keep=2,
                                    storage_timeout=9.0, warm_start_from="/other/run", warm_start_optimizer=True)


def test_a_warm_start_option_without_a_warm_start_is_not_passed_on():
    env = to_worker_env(RunConfig(script="x.py", warm_start_optimizer=True))
    assert contract.ENV_WARM_START_FROM not in env and contract.ENV_WARM_START_OPTIMIZER not in env


def test_an_override_wins_over_the_variable_and_the_variable_over_the_default():
    env = {contract.ENV_CHECKPOINT_KEEP: "5", contract.ENV_CHECKPOINT_EVERY_STEPS: ""}
    got = from_env(env, {"keep": None, "every_steps": None})
    assert got["keep"] == 5 and got["every_steps"] == contract.DEFAULT_CHECKPOINT_EVERY_STEPS
    assert from_env(env, {"keep": 9})["keep"] == 9


@pytest.mark.parametrize("field,value,message", [
    ("keep", 0, "keep must be >= 1, got 0"),
    ("every_steps", -1, "every_steps must be >= 0, got -1"),
    ("storage_timeout", 0.0, "storage_timeout must be > 0 seconds, got 0.0"),
    ("every_seconds", float("nan"), "every_seconds must be >= 0, got nan"),
])
def test_the_checkpointer_checks_the_bounds_the_cli_checks(field, value, message):
    with pytest.raises(CheckpointError, match=message):
        CheckpointConfig(**{field: value})
