"""A pytest plugin: check in your own CI that your training script survives preemption.

Installed with kubetrain (entry point `pytest11`), so a test needs three lines:

    def test_train_survives_preemption(kubetrain_chaos):
        report = kubetrain_chaos("train.py", "--steps", "200", nproc=2, faults=5, seed=1)
        assert report.ok, report.summary()

It is `launch chaos train.py --local`: the script runs without and with faults, checkpoints
in the test's tmp_path, and the report says which invariant failed at which fault.
Importing this module costs nothing: torch loads only when the fixture runs.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest


@pytest.fixture
def kubetrain_chaos(tmp_path) -> Callable[..., Any]:
    """Run(script, *script_args, **ChaosPlan fields) -> ChaosReport."""
    from kubetrain_chaos import ChaosPlan, run_chaos

    def run(script: str, *script_args: str, **plan: Any):
        plan.setdefault("workdir", str(tmp_path / "kubetrain-chaos"))
        report = run_chaos(ChaosPlan(script=str(script), script_args=tuple(script_args), **plan))
        print(report.summary())
        return report

    return run
