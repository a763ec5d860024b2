"""in-place: a rank SIGKILLed -> the first step completed after recovery, in place vs a new supervisor.

In place: the supervisor (--in-place-restarts 1) starts torchrun again itself, from its warm spare
(torch already imported: trainer/supervisor/spare.py) or, `cold`, as new Pythons
(--cold-in-place-restarts). Exit and restart:
the supervisor exits 137 and a new `python -m trainer run` starts, which is what a replaced pod
costs locally, minus the scheduling, the image and the container start. Both on the same script
(examples/train.py, 2 gloo ranks), checkpoints on local disk, alternating, `trials` times each.

Every mode kills the rank SETTLE_S after the first commit, and `warm` once its supervisor has also
logged that the spare (started once the ranks train) has torch imported, as it has long before a
real fault; a spare still importing is a slower restart, not a cold one.

Where the time goes, from the records themselves: `down` the kill to the supervisor's in-place
line (in place) or to its exit (restart); `start` from there to rank 0's resume line (processes,
torch import, rendezvous, restore); `first step` from there to the first heartbeat, whose time
is when that step finished (trainer/control_folder.Progress).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time

from bench.context import REPO, Context, progress
from trainer import contract
from trainer.control_folder import Progress, RankPid

SCRIPT = os.path.join(REPO, "examples", "train.py")
ARGS = ("--steps", "100000", "--samples", "2048", "--hidden", "64", "--step-sleep", "0.02")
TIMEOUT_S = 300.0
SETTLE_S = 10.0
MODES = ("warm", "cold", "restart")


def _cmd(ckpt: str, run_id: str, in_place: int, cold: bool) -> list[str]:
    return [sys.executable, "-m", "trainer", "run", "--nproc-per-node", "2", "--checkpoint", ckpt, "--run-id", run_id,
            "--checkpoint-every-steps", "10", "--grace-seconds", "5", "--in-place-restarts", str(in_place),
            *(["--cold-in-place-restarts"] if cold else []), SCRIPT, *ARGS]


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {TIMEOUT_S:g}s")
        time.sleep(0.005)


def _log_has(path: str, text: str, since: int = 0) -> bool:
    with open(path, "rb") as f:
        f.seek(since)
        return text.encode() in f.read()


def _start(ckpt: str, run_id: str, in_place: int, control: str, log_path: str, cold: bool = False) -> subprocess.Popen:
    env = {**os.environ, contract.ENV_CONTROL_DIR: control}
    with open(log_path, "a") as log:
        return subprocess.Popen(_cmd(ckpt, run_id, in_place, cold), cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _first_step_after(control: str) -> float:
    beats = Progress.read_all(control)
    return min(p.time for p in beats.values()) if beats else 0.0


def trial(tmp: str, name: str, mode: str) -> dict:
    ckpt, control, log = os.path.join(tmp, name, "ckpt"), os.path.join(tmp, name, "control"), \
        os.path.join(tmp, name + ".log")
    os.makedirs(control, exist_ok=True)
    in_place = mode != "restart"
    proc = _start(ckpt, name, 1 if in_place else 0, control, log, cold=mode == "cold")
    procs = [proc]
    try:
        _wait(lambda: os.path.exists(os.path.join(ckpt, name, contract.LATEST_NAME)), "first commit")
        if mode == "warm":
            _wait(lambda: _log_has(log, contract.LOG_SPARE_WARM), "the warm spare")
        time.sleep(SETTLE_S)
        _wait(lambda: 1 in RankPid.live(control), "rank 1")
        t_kill = time.time()
        os.kill(RankPid.live(control)[1], signal.SIGKILL)
        if in_place:
            _wait(lambda: _log_has(log, "restarting in place (1 of 1)"), "in-place restart")
            t_down = time.time()
        else:
            proc.wait(TIMEOUT_S)
            t_down = time.time()
            for f in os.listdir(control):  # a new pod has a fresh control folder
                os.unlink(os.path.join(control, f))
            proc = _start(ckpt, name, 0, control, log)
            procs.append(proc)
        mark = os.path.getsize(log)
        _wait(lambda: _log_has(log, contract.LOG_RESUMED.split("{")[0], since=mark), "resume line")
        t_resumed = time.time()
        _wait(lambda: _first_step_after(control) > 0, "first step after recovery")
        t_step = _first_step_after(control)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
    return {"total_s": t_step - t_kill, "down_s": t_down - t_kill, "start_s": t_resumed - t_down,
            "first_step_s": max(0.0, t_step - t_resumed)}


def run(ctx: Context) -> dict:
    rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for t in range(ctx.trials):
        for mode in MODES:
            progress(f"in-place trial {t + 1}/{ctx.trials}: {mode}")
            rows[mode].append(trial(ctx.tmp, f"{mode}-{t}", mode))
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in rows.items()}
    return {"trials": ctx.trials, **med, "all": rows,
            "restart_over_warm": med["restart"]["total_s"] / med["warm"]["total_s"],
            "cold_over_warm": med["cold"]["total_s"] / med["warm"]["total_s"],
            "restart_part_cold_over_warm": med["cold"]["start_s"] / med["warm"]["start_s"]}
