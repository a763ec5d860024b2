"""M7: steps/s under `python -m trainer run` vs bare torchrun, same script, 2 ranks.

Also the Checkpointer alone under bare torchrun (the API's share of the cost vs the
supervisor's), and one step_end()'s cost timed in-process (bench/step_end.py), which
resolves what whole runs on a noisy machine cannot.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile

from bench.context import REPO, WORKLOAD, Context, progress
from trainer import contract

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _output(cmd: list[str], env: dict) -> str:
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return r.stdout


def steps_per_s(cmd: list[str], env: dict) -> float:
    # Both ranks print theirs, and their lines can run into each other: the slower sets the pace.
    return min(float(v) for v in re.findall(r"STEPS_PER_S (\d+(?:\.\d+)?)", _output(cmd, env)))


def run(ctx: Context) -> dict:
    steps, reps = (100, 1) if ctx.quick else (600, 5)
    workload = [WORKLOAD, "--mib", "16", "--steps", str(steps), "--step-ms", "0", "--compute", "64"]
    base_env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs: dict[str, list[float]] = {"bare": [], "checkpointer": [], "ours": []}
    with tempfile.TemporaryDirectory(dir=ctx.tmp) as d:
        def command(name: str, i: int) -> tuple[list[str], dict]:
            if name == "bare":
                return [*TORCHRUN, *workload, "--no-checkpointer"], base_env
            if name == "checkpointer":  # the API configured by env, as the supervisor would
                return [*TORCHRUN, *workload], {**base_env, contract.ENV_CHECKPOINT_URI: d,
                                                contract.ENV_RUN_ID: f"m7-api-{i}",
                                                contract.ENV_CHECKPOINT_EVERY_STEPS: "0"}
            return [sys.executable, "-m", "trainer", "run", "--nproc-per-node", "2", "--checkpoint", d,
                    "--run-id", f"m7-{i}", "--checkpoint-every-steps", "0", *workload], base_env

        names = list(runs)
        for i in range(reps):  # interleaved, each rep in another order
            for name in names[i % 3:] + names[:i % 3]:
                progress(f"M7 rep {i + 1}/{reps}: {name}")
                runs[name].append(steps_per_s(*command(name, i)))
    bare, api, ours = runs["bare"], runs["checkpointer"], runs["ours"]
    progress("M7: one step_end() in-process")
    rounds, per_round = (1, 200) if ctx.quick else (4, 300)
    out = _output([*TORCHRUN, "-m", "bench.step_end", "--rounds", str(rounds), "--steps", str(per_round)], base_env)
    step_end = {int(k): {"ms_per_call": float(c), "ms_per_step": float(t)}
                for k, c, t in re.findall(r"STEP_END (\d+) ([\d.]+) ([\d.]+)", out)}
    return {"runs_steps_per_s": runs, "reps": reps, "steps": steps, "step_end_by_max_stride": step_end,
            # A rep's runs ran back to back and so shared the machine's mood (which swings by 20 %
            # here over minutes): the median of the per-rep ratios, not a ratio of bests.
            "ratio": statistics.median(o / b for o, b in zip(ours, bare)),
            "api_ratio": statistics.median(c / b for c, b in zip(api, bare)), "target": 0.99}
