"""M6: steps a rerun must redo after a SIGTERM of the run, and after a SIGKILL of its worker.

Redone = the last step completed before the fault minus the committed step; a checkpoint every 20 steps.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
import uuid

from bench.context import REPO, Context, progress
from bench.processes import workers_below
from bench.store import delete_prefix, latest_step
from bench.trainer_run import trainer_run_cmd


def one_trial(uri: str, sig: signal.Signals, t: int, of: int) -> int:
    run_id = f"m6-{sig.name}-{t}-{uuid.uuid4().hex[:6]}"
    cmd = trainer_run_cmd(uri=uri, run_id=run_id, mib=16, every_steps=20, step_ms=20, workload=("--print-steps",))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    last = 0
    deadline = None
    for line in proc.stdout:
        if line.startswith("STEP "):
            last = int(line.split()[1])
            if deadline is None:
                progress(f"M6 {sig.name} trial {t + 1}/{of}: training")
                # past the first checkpoint (step 20), at a different point of the interval each trial
                deadline = time.monotonic() + 1.0 + (t % 7) * 0.11
        if deadline and time.monotonic() > deadline:
            break
    if sig == signal.SIGTERM:
        proc.send_signal(sig)
    else:
        for pid in workers_below(proc):
            os.kill(pid, signal.SIGKILL)
    for line in proc.stdout:  # to the end: the steps completed before the run stopped
        if line.startswith("STEP "):
            last = int(line.split()[1])
    proc.wait(60)
    proc.stdout.close()
    return last - (latest_step(uri, run_id) or 0)


def run(ctx: Context) -> dict:
    trials = 1 if ctx.quick else 10
    out = {}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        redone = []
        for t in range(trials):
            redone.append(one_trial(f"s3://{ctx.bucket}/m6", sig, t, trials))
        out[sig.name] = {"trials": trials, "mean": statistics.mean(redone), "max": max(redone),
                         "target": 1 if sig == signal.SIGTERM else 10}
    delete_prefix(ctx.bucket, "m6/")
    return out
