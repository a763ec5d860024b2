"""M8: how fast the launcher starts: `launch --help` and `launch --dry-run` vs `python -c pass`.

The ratio to a bare interpreter started on the same machine in the same run is the figure
(the launcher's own imports); seconds alone would mostly measure the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys

from bench.context import REPO, Context
from bench.timing import median_time

LAUNCH = [sys.executable, "-m", "launcher.cli"]


def run(ctx: Context) -> dict:
    example = os.path.join(REPO, "examples", "train.py")
    cases = {"python -c pass": [sys.executable, "-c", "pass"], "launch --help": [*LAUNCH, "--help"],
             "launch --dry-run": [*LAUNCH, example, "--gpus", "16", "--checkpoint", "s3://b/c", "--dry-run"]}
    reps = max(5, ctx.reps)
    seconds = {}
    for _ in range(2):  # two interleaved rounds: a swing of the machine hits every case
        for name, cmd in cases.items():
            took = median_time(lambda: subprocess.run(cmd, cwd=REPO, capture_output=True, check=True), reps)
            seconds[name] = min(took, seconds.get(name, took))
    python = seconds["python -c pass"]
    return {"seconds": seconds, "help_vs_python": seconds["launch --help"] / python,
            "dry_run_vs_python": seconds["launch --dry-run"] / python}
