import json
import signal
import subprocess
import sys

import pytest

from trainer import contract
from trainer.contract import ExitCode


@pytest.mark.parametrize("code,retry", [(0, False), (1, False), (2, False), (127, False), (137, True),
                                        (143, True), (200, True), (201, True)])
def test_exit_codes_follow_the_operators_exitcode_policy(code, retry):
    assert contract.is_retryable(code) is retry


def test_documented_codes_do_not_collide_with_signal_codes_other_than_sigterm():
    signal_codes = {128 + s.value for s in signal.Signals}
    assert ExitCode.PREEMPTED == 128 + signal.SIGTERM
    assert ExitCode.HANG not in signal_codes and ExitCode.INFRA not in signal_codes


@pytest.mark.parametrize("code,text", [(137, "killed by SIGKILL"), (143, "preempted"), (200, "hang"), (1, "user error"),
                                       (0, "finished"), (7, "failed (permanent)")])
def test_describe_exit_code(code, text):
    assert text in contract.describe_exit_code(code)


@pytest.mark.parametrize("step,name", [(0, "step-000000000"), (1200, "step-000001200"), (10**10, "step-10000000000")])
def test_step_dir_names_sort_and_parse_back(step, name):
    assert contract.step_dir_name(step) == name
    assert contract.parse_step_dir_name(name) == step
    assert contract.parse_step_dir_name(f"s3://b/run/{name}/") == step


@pytest.mark.parametrize("name", ["step-12", "latest", "step-00000001x", "manifest.json", "step-"])
def test_other_names_are_not_steps(name):
    assert contract.parse_step_dir_name(name) is None


def test_the_contract_imports_neither_torch_nor_kubernetes():
    code = "import sys, trainer.contract, trainer; print(sorted(m for m in ('torch','kubernetes','fsspec') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == []


def test_termination_grace_period_never_undercuts_the_runtime_grace():
    for grace in (3, 30, 30.2, 600):
        assert contract.termination_grace_period_seconds(grace) >= grace


def test_runtime_log_lines_parse_back():
    lines = ["[kubetrain rank 0] restored step-000000040 from s3://b/r; " + contract.LOG_RESUMED.format(step=40),
             "[kubetrain rank 0] " + contract.LOG_PREEMPTED.format(step=57) + "; exiting", "noise"]
    assert contract.parse_runtime_log(lines) == {"resumed_from": 40, "preempted_at": 57, "in_place": None,
                                                 "in_place_after": None}
    assert contract.parse_runtime_log([]) == {"resumed_from": None, "preempted_at": None, "in_place": None,
                                              "in_place_after": None}
    in_place = contract.LOG_RESTARTING_IN_PLACE.format(n=2, budget=3, code=137)
    assert contract.parse_runtime_log([in_place + ": rank 1 was killed by SIGKILL"])["in_place"] == 2
    assert contract.parse_runtime_log(["x " + in_place])["in_place_after"] == 137
