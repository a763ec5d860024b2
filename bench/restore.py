"""M5: recovery.

- restore() from S3 (download + verify + load) vs boto3 download_file + torch.load, and vs
  restore() from local disk, in one process;
- a 2-rank run's SIGKILL of rank 1 after a commit, then its restart, in wall-clock phases
  until the first step after it: from S3 vs the same restart from local disk.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
import uuid

import boto3
import torch

from bench.context import REPO, Context, progress
from bench.processes import workers_below
from bench.store import latest_step
from bench.timing import median_time
from bench.trainer_run import trainer_run_cmd
from bench.workload import build_model
from trainer import contract
from trainer.checkpoint import Checkpointer


def restore(ctx: Context) -> dict:
    s3, bucket, tmp = boto3.client("s3"), ctx.bucket, ctx.tmp
    model = build_model(ctx.mib)
    Checkpointer(model, uri=f"s3://{bucket}/m5", run_id="r").save(1, blocking=True)
    Checkpointer(model, uri=os.path.join(tmp, "m5"), run_id="r").save(1, blocking=True)
    key = f"m5/r/{contract.step_dir_name(1)}/state.pt"
    target = build_model(ctx.mib)

    def raw() -> None:
        s3.download_file(bucket, key, os.path.join(tmp, "m5.pt"))
        target.load_state_dict(torch.load(os.path.join(tmp, "m5.pt"), weights_only=False)["model"])

    ours_s3 = median_time(lambda: Checkpointer(target, uri=f"s3://{bucket}/m5", run_id="r").restore(), ctx.reps)
    raw_s3 = median_time(raw, ctx.reps)
    local = median_time(lambda: Checkpointer(target, uri=os.path.join(tmp, "m5"), run_id="r").restore(), ctx.reps)
    return {"ours_s3_s": ours_s3, "boto3_download_load_s": raw_s3, "ours_local_s": local,
            "ratio_vs_boto3": ours_s3 / raw_s3, "ratio_vs_local": ours_s3 / local, "target_vs_local": 1.5}


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL a run: its ranks first (in sessions of their own, they outlive a killed torchrun), then it."""
    for pid in workers_below(proc):
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait(60)


def recovery_phases(uri: str, mib: int) -> dict:
    """SIGKILL of rank 1 after a committed checkpoint, then a restart: wall-clock phases until the first step."""
    run_id = f"m5r-{uuid.uuid4().hex[:6]}"
    cmd = trainer_run_cmd(uri=uri, run_id=run_id, mib=mib, every_steps=20, step_ms=20, nproc=2,
                          workload=("--print-timing",))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while latest_step(uri, run_id) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc)
            raise RuntimeError(f"the first run of {run_id} never committed (exit {proc.returncode})")
        time.sleep(0.2)
    time.sleep(0.3)
    t_kill = time.time()
    for pid in workers_below(proc)[1:]:
        os.kill(pid, signal.SIGKILL)
    proc.wait(120)  # the supervisor sees the rank die, ends the rest and exits
    t_exit = time.time()
    t_start = time.time()
    with tempfile.NamedTemporaryFile("w+", prefix="m5-restart-", suffix=".log") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
        marks = {}
        try:
            for line in proc.stdout:
                # Ranks share the pipe: another rank's output can run into this line.
                if m := re.search(r"T (\w+) (\d+\.\d+)", line):
                    marks[m.group(1)] = float(m.group(2))
                    if m.group(1) == "first_step":
                        break
        finally:
            _kill(proc)
            proc.stdout.close()
        if "first_step" not in marks:
            log.seek(0)
            raise RuntimeError(f"the restarted run never completed a step:\n{log.read()[-3000:]}")
    return {"detection_s": t_exit - t_kill, "restart_s": marks["restore_start"] - t_start,
            "download_load_s": marks["restore_end"] - marks["restore_start"],
            "first_step_s": marks["first_step"] - marks["restore_end"],
            "start_to_first_step_s": marks["first_step"] - t_start,
            "kill_to_first_step_s": marks["first_step"] - t_kill}


def run(ctx: Context) -> dict:
    out = {"restore": restore(ctx)}
    progress("M5: restore() timed; now a SIGKILL and restart from S3")
    s3 = recovery_phases(f"s3://{ctx.bucket}/m5r", ctx.mib)
    progress("M5: now the same from local disk")
    local = recovery_phases(os.path.join(ctx.tmp, "m5r"), ctx.mib)
    out["recovery"] = {"s3": s3, "local": local, "target": 1.5,
                       "ratio_vs_local_start": s3["start_to_first_step_s"] / local["start_to_first_step_s"]}
    return out
