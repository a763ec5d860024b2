"""M4: SIGTERM to `python -m trainer run` → exit 143 with the step committed, vs the bytes at raw boto3's rate.

Needs M3's boto3 throughput, from earlier in the same run.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import time
import uuid

from bench.context import REPO, Context, progress
from bench.store import delete_prefix, latest_step
from bench.trainer_run import trainer_run_cmd
from trainer import contract

GRACE_S = 30.0


def run(ctx: Context) -> dict:
    boto3_MiBps = ctx.earlier["M3"]["boto3_MiBps"]
    uri = f"s3://{ctx.bucket}/m4"
    times, ok = [], 0
    for t in range(ctx.trials):
        run_id = f"m4-{t}-{uuid.uuid4().hex[:6]}"
        cmd = trainer_run_cmd(uri=uri, run_id=run_id, mib=ctx.mib, every_steps=0, step_ms=20,
                              flags=("--grace-seconds", str(GRACE_S)))
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in proc.stdout:
            if "READY" in line:
                break
        progress(f"M4 trial {t + 1}/{ctx.trials}: training, SIGTERM next")
        time.sleep(0.5 + (t % 5) * 0.13)  # land at different points of a step
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(GRACE_S + 10)
        elapsed = time.perf_counter() - t0
        proc.stdout.close()
        ok += rc == contract.ExitCode.PREEMPTED and (latest_step(uri, run_id) or 0) > 0
        times.append(elapsed)
        delete_prefix(ctx.bucket, f"m4/{run_id}/")
    budget = 1.2 * ctx.mib / boto3_MiBps + 1.0
    return {"trials": ctx.trials, "success_rate": ok / ctx.trials, "median_s": statistics.median(times),
            "max_s": max(times), "target_s": budget, "grace_s": GRACE_S}
