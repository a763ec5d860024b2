"""`python -m trainer run bench/workload.py` as the metrics start it."""

from __future__ import annotations

import sys

from bench.context import WORKLOAD


def trainer_run_cmd(*, uri: str, run_id: str, mib: int, every_steps: int, step_ms: float, nproc: int = 1,
                    steps: int = 1_000_000, flags: tuple[str, ...] = (), workload: tuple[str, ...] = ()) -> list[str]:
    """The command line of a run of the bench workload under the runtime's supervisor."""
    return [sys.executable, "-m", "trainer", "run", "--nproc-per-node", str(nproc), "--checkpoint", uri,
            "--run-id", run_id, "--checkpoint-every-steps", str(every_steps), *flags,
            WORKLOAD, "--mib", str(mib), "--steps", str(steps), "--step-ms", str(step_ms), *workload]
