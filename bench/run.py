"""What checkpointing costs, against baselines measured in the same run.

    python bench/run.py            # 64 and 256 MiB, 20 SIGTERM trials
    python bench/run.py --quick    # 64 MiB, 3 trials: a smoke run, under a minute or two

Prints a table and writes bench/results/<time>.json. Every figure is a ratio
to a baseline taken in this process on the same bytes, since shared machines
are noisy:

  M1 stall      Checkpointer.save() blocking time  vs  torch.save + fsync to local disk
  M3 upload     save → committed manifest on moto  vs  boto3 upload_file of the same bytes
                (and s3fs put_file, and torch DCP's FsspecWriter at its defaults)
  M4 sigterm    SIGTERM to `python -m trainer run` → exit 143 with the step committed,
                vs bytes / raw boto3 throughput
  M2 overhead   training wall time with a checkpoint every K steps vs none (same process)
  M5 restore    restore() from S3 (download + verify + load) vs boto3 download_file + torch.load,
                and vs restore() from local disk
  M6 redone     steps redone after SIGTERM and after SIGKILL of the worker
  M7 runtime    steps/s under `python -m trainer run` vs bare torchrun, same script, 2 ranks;
                and one step_end()'s cost, timed in-process (bench/step_end.py)
  M8 launcher   `launch --help` and `launch --dry-run` vs `python -c pass`
  M9 memory     peak RSS during a save minus before, vs the state's size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import boto3  # noqa: E402
import torch  # noqa: E402

from bench.workload import build_model  # noqa: E402
from tests.s3 import CREDENTIALS, moto_server  # noqa: E402
from trainer import contract  # noqa: E402
from trainer.checkpoint import Checkpointer  # noqa: E402

MiB = 1 << 20


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def best(fn, n: int) -> float:
    """Median of n runs: the middle is steadier than the mean on a shared machine."""
    return statistics.median(timed(fn) for _ in range(n))


def torch_save_fsync(state, path: str) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def m1_stall(mib: int, tmp: str, reps: int) -> dict:
    model = build_model(mib)
    ckpt = Checkpointer(model, uri=os.path.join(tmp, "m1"), run_id="r", keep=1)
    stalls = []
    for i in range(reps):
        stalls.append(timed(lambda: ckpt.save(i + 1)))
        ckpt.wait()
    base = best(lambda: torch_save_fsync(model.state_dict(), os.path.join(tmp, "m1.pt")), reps)
    stall = statistics.median(stalls)
    return {"stall_s": stall, "torch_save_fsync_s": base, "ratio": stall / base, "target": 0.05}


def m3_upload(mib: int, tmp: str, bucket: str, reps: int) -> dict:
    s3 = boto3.client("s3")
    model = build_model(mib)
    path = os.path.join(tmp, "m3.pt")
    torch_save_fsync(model.state_dict(), path)
    nbytes = os.path.getsize(path)
    ckpt = Checkpointer(model, uri=f"s3://{bucket}/m3", run_id="r", keep=1)
    ckpt.save(0, blocking=True)  # warm both paths up before timing
    s3.upload_file(path, bucket, "raw/warmup")
    ours_t, raw_t = [], []
    for i in range(reps):  # interleaved, so drift on a shared machine hits both alike
        ckpt.wait()  # the previous save's prune runs beside training; it is not part of this commit
        ours_t.append(timed(lambda: ckpt.save(i + 1, blocking=True)))
        raw_t.append(timed(lambda: s3.upload_file(path, bucket, "raw/m3")))  # one key: moto keeps every object
    ours, raw = statistics.median(ours_t), statistics.median(raw_t)

    import s3fs

    fs = s3fs.S3FileSystem()
    s3fs_put = best(lambda: fs.put_file(path, f"{bucket}/s3fs/m3"), reps)

    from torch.distributed.checkpoint import FsspecWriter, save

    sd = model.state_dict()
    dcp = best(lambda: save(sd, storage_writer=FsspecWriter(f"s3://{bucket}/dcp/m3")), reps)
    for prefix in ("raw/", "s3fs/", "dcp/"):
        delete_prefix(bucket, prefix)
    mbps = lambda s: nbytes / MiB / s  # noqa: E731
    return {"bytes": nbytes, "ours_s": ours, "boto3_upload_file_s": raw, "s3fs_put_file_s": s3fs_put,
            "dcp_fsspecwriter_s": dcp, "ours_MiBps": mbps(ours), "boto3_MiBps": mbps(raw),
            "s3fs_MiBps": mbps(s3fs_put), "dcp_MiBps": mbps(dcp), "ratio_vs_boto3": raw / ours,
            "ratio_vs_dcp": dcp / ours, "targets": {"vs_boto3": 0.9, "vs_dcp": 1.5}}


def delete_prefix(bucket: str, prefix: str) -> None:
    s3 = boto3.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def m4_sigterm(mib: int, bucket: str, trials: int, grace: float, boto3_MiBps: float, env: dict) -> dict:
    times, ok = [], 0
    for t in range(trials):
        run_id = f"m4-{t}-{uuid.uuid4().hex[:6]}"
        cmd = [sys.executable, "-m", "trainer", "run", "--nproc-per-node", "1", "--checkpoint", f"s3://{bucket}/m4",
               "--run-id", run_id, "--checkpoint-every-steps", "0", "--grace-seconds", str(grace),
               os.path.join(REPO, "bench", "workload.py"), "--mib", str(mib), "--steps", "1000000", "--step-ms", "20"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in proc.stdout:
            if "READY" in line:
                break
        time.sleep(0.5 + (t % 5) * 0.13)  # land at different points of a step
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(grace + 10)
        elapsed = time.perf_counter() - t0
        s3 = boto3.client("s3")
        try:
            latest = int(s3.get_object(Bucket=bucket, Key=f"m4/{run_id}/{contract.LATEST_NAME}")["Body"].read())
        except s3.exceptions.NoSuchKey:
            latest = 0
        ok += rc == contract.ExitCode.PREEMPTED and latest > 0
        times.append(elapsed)
        delete_prefix(bucket, f"m4/{run_id}/")  # moto holds objects in memory: 20 trials at 1 GiB would not fit
    nbytes = mib * MiB
    budget = 1.2 * nbytes / MiB / boto3_MiBps + 1.0
    return {"trials": trials, "success_rate": ok / trials, "median_s": statistics.median(times), "max_s": max(times),
            "target_s": budget, "grace_s": grace}


def m2_overhead(mib: int, uri: str, upload_s: float, steps: int) -> dict:
    """Same process, same model: N compute steps with a checkpoint every K steps vs none."""
    model = build_model(mib)
    x = torch.randn(256, 1024)

    def step() -> None:
        with torch.no_grad():
            model(x)

    step_s = best(step, 5)
    k = max(2, int(2 * upload_s / step_s) + 1)  # interval >= 2x the save-to-commit time
    ckpt = Checkpointer(model, uri=uri, run_id="r", keep=1, every_steps=k)
    ckpt.save(0, blocking=True)  # first save allocates the snapshot buffers; steady state is what recurs

    def loop(with_ckpt: bool) -> None:
        for i in range(1, steps + 1):
            step()
            if with_ckpt:
                ckpt.step_end(i)
        if with_ckpt:
            ckpt.wait()

    base, ours = [], []
    for _ in range(2):  # interleaved
        base.append(timed(lambda: loop(False)))
        ours.append(timed(lambda: loop(True)))
    b, o = min(base), min(ours)
    return {"steps": steps, "every_k": k, "step_s": step_s, "no_ckpt_s": b, "ckpt_s": o, "overhead": o / b - 1,
            "target": 0.02}


def m5_restore(mib: int, tmp: str, bucket: str, reps: int) -> dict:
    s3 = boto3.client("s3")
    model = build_model(mib)
    Checkpointer(model, uri=f"s3://{bucket}/m5", run_id="r").save(1, blocking=True)
    Checkpointer(model, uri=os.path.join(tmp, "m5"), run_id="r").save(1, blocking=True)
    key = f"m5/r/{contract.step_dir_name(1)}/state.pt"
    target = build_model(mib)

    def raw() -> None:
        s3.download_file(bucket, key, os.path.join(tmp, "m5.pt"))
        target.load_state_dict(torch.load(os.path.join(tmp, "m5.pt"), weights_only=False)["model"])

    ours_s3 = best(lambda: Checkpointer(target, uri=f"s3://{bucket}/m5", run_id="r").restore(), reps)
    raw_s3 = best(raw, reps)
    local = best(lambda: Checkpointer(target, uri=os.path.join(tmp, "m5"), run_id="r").restore(), reps)
    return {"ours_s3_s": ours_s3, "boto3_download_load_s": raw_s3, "ours_local_s": local,
            "ratio_vs_boto3": ours_s3 / raw_s3, "ratio_vs_local": ours_s3 / local, "target_vs_local": 1.5}


def _committed(uri: str, run_id: str) -> bool:
    """Whether the run's `latest` exists (boto3 directly: s3fs caches that an object was missing)."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        try:
            boto3.client("s3").head_object(Bucket=bucket, Key=f"{prefix}/{run_id}/{contract.LATEST_NAME}")
            return True
        except Exception:  # noqa: BLE001 - 404 until it is there
            return False
    return os.path.exists(os.path.join(uri, run_id, contract.LATEST_NAME))


def _recovery_phases(uri: str, mib: int, env: dict) -> dict:
    """SIGKILL of rank 1 after a committed checkpoint, then a restart: wall-clock phases until the first step."""
    run_id = f"m5r-{uuid.uuid4().hex[:6]}"
    cmd = [sys.executable, "-m", "trainer", "run", "--nproc-per-node", "2", "--checkpoint", uri, "--run-id", run_id,
           "--checkpoint-every-steps", "20", os.path.join(REPO, "bench", "workload.py"), "--mib", str(mib),
           "--steps", "1000000", "--step-ms", "20", "--print-timing"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not _committed(uri, run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)
    t_kill = time.time()
    for pid in _workers_of(run_id)[1:]:
        os.kill(pid, signal.SIGKILL)
    proc.wait(120)
    t_exit = time.time()
    t_start = time.time()
    log = tempfile.NamedTemporaryFile("w+", prefix="m5-restart-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    marks = {}
    for line in proc.stdout:
        # Ranks share the pipe: another rank's output can run into this line.
        if m := re.search(r"T (\w+) (\d+\.\d+)", line):
            marks[m.group(1)] = float(m.group(2))
            if m.group(1) == "first_step":
                break
    for pid in _workers_of(run_id):
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait(60)
    if "first_step" not in marks:
        log.seek(0)
        raise RuntimeError(f"the restarted run never completed a step:\n{log.read()[-3000:]}")
    os.unlink(log.name)
    return {"detection_s": t_exit - t_kill, "restart_s": marks["restore_start"] - t_start,
            "download_load_s": marks["restore_end"] - marks["restore_start"],
            "first_step_s": marks["first_step"] - marks["restore_end"],
            "start_to_first_step_s": marks["first_step"] - t_start, "kill_to_first_step_s": marks["first_step"] - t_kill}


def m5_recovery(mib: int, bucket: str, tmp: str, env: dict) -> dict:
    """M5 split: S3 recovery phases vs the same restart loading the same state from local disk (a cold start)."""
    s3 = _recovery_phases(f"s3://{bucket}/m5r", mib, env)
    local = _recovery_phases(os.path.join(tmp, "m5r"), mib, env)
    return {"s3": s3, "local": local, "ratio_vs_local_start": s3["start_to_first_step_s"] / local["start_to_first_step_s"],
            "target": 1.5}


def m6_redone(bucket: str, env: dict, trials: int) -> dict:
    """Steps the rerun must redo: last step completed before the fault minus the committed step."""
    out = {}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        redone = []
        for t in range(trials):
            run_id = f"m6-{sig.name}-{t}-{uuid.uuid4().hex[:6]}"
            cmd = [sys.executable, "-m", "trainer", "run", "--checkpoint", f"s3://{bucket}/m6", "--run-id", run_id,
                   "--checkpoint-every-steps", "20", os.path.join(REPO, "bench", "workload.py"), "--mib", "16",
                   "--steps", "1000000", "--step-ms", "20", "--print-steps"]
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True)
            last = 0
            deadline = None
            for line in proc.stdout:
                if line.startswith("STEP "):
                    last = int(line.split()[1])
                    # past the first checkpoint (step 20), at a different point of the interval each trial
                    deadline = deadline or time.monotonic() + 1.0 + (t % 7) * 0.11
                if deadline and time.monotonic() > deadline:
                    break
            if sig == signal.SIGTERM:
                proc.send_signal(sig)
            else:
                worker = _workers_of(run_id)
                for pid in worker:
                    os.kill(pid, signal.SIGKILL)
            for line in proc.stdout:
                if line.startswith("STEP "):
                    last = int(line.split()[1])
            proc.wait(60)
            body = boto3.client("s3").get_object(Bucket=bucket, Key=f"m6/{run_id}/{contract.LATEST_NAME}")["Body"]
            redone.append(last - int(body.read()))
        out[sig.name] = {"trials": trials, "mean": statistics.mean(redone), "max": max(redone),
                         "target": 1 if sig == signal.SIGTERM else 10}
    return out


def _workers_of(run_id: str) -> list[int]:
    """PIDs of the training ranks of this run (the torchrun agent and supervisor excluded)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_worker_of(int(p), run_id)]


def _is_worker_of(pid: int, run_id: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return False
    return (b"trainer.worker" in cmd and b"trainer._torchrun" not in cmd
            and f"KUBETRAIN_RUN_ID={run_id}".encode() in env)


def m7_runtime(steps: int, reps: int) -> dict:
    workload = [os.path.join(REPO, "bench", "workload.py"), "--mib", "16", "--steps", str(steps), "--step-ms", "0",
                "--compute", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def rate(cmd: list[str]) -> float:
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600).stdout
        # Both ranks print theirs, and their lines can run into each other: the slower sets the pace.
        return min(float(v) for v in re.findall(r"STEPS_PER_S (\d+(?:\.\d+)?)", out))

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    # The Checkpointer under bare torchrun splits our overhead into the API's and the supervisor's.
    api_env = {contract.ENV_CHECKPOINT_EVERY_STEPS: "0"}
    runs: dict[str, list[float]] = {"bare": [], "checkpointer": [], "ours": []}
    with tempfile.TemporaryDirectory() as d:
        commands = {
            "bare": lambda i: [*torchrun, *workload, "--no-checkpointer"],
            "checkpointer": lambda i: [*torchrun, *workload],
            "ours": lambda i: [sys.executable, "-m", "trainer", "run", "--nproc-per-node", "2", "--checkpoint", d,
                               "--run-id", f"m7-{i}", "--checkpoint-every-steps", "0", *workload],
        }
        names = list(commands)
        for i in range(reps):  # interleaved, each rep in another order
            for name in names[i % 3:] + names[:i % 3]:
                env.update({contract.ENV_CHECKPOINT_URI: d, contract.ENV_RUN_ID: f"m7-api-{i}", **api_env}
                           if name == "checkpointer" else {})
                runs[name].append(rate(commands[name](i)))
                for k in (contract.ENV_CHECKPOINT_URI, contract.ENV_RUN_ID, *api_env):
                    env.pop(k, None)
    bare, api, ours = runs["bare"], runs["checkpointer"], runs["ours"]
    # Below the noise of whole runs: one step_end's cost, timed in-process (bench/step_end.py).
    out = subprocess.run([*torchrun, os.path.join(REPO, "bench", "step_end.py")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600).stdout
    step_end = {int(k): {"ms_per_call": float(c), "ms_per_step": float(t)}
                for k, c, t in re.findall(r"STEP_END (\d+) ([\d.]+) ([\d.]+)", out)}
    return {"runs_steps_per_s": runs, "reps": reps, "step_end_by_max_stride": step_end,
            # A rep's runs ran back to back and so shared the machine's mood (which swings by 20 %
            # here over minutes): the median of the per-rep ratios, not a ratio of bests.
            "ratio": statistics.median(o / b for o, b in zip(ours, bare)),
            "api_ratio": statistics.median(c / b for c, b in zip(api, bare)), "target": 0.99}


def m8_launcher(reps: int) -> dict:
    launch = [sys.executable, "-m", "launcher.cli"]
    example = os.path.join(REPO, "examples", "train.py")
    cases = {"python -c pass": [sys.executable, "-c", "pass"], "launch --help": launch + ["--help"],
             "launch --dry-run": launch + [example, "--gpus", "16", "--checkpoint", "s3://b/c", "--dry-run"]}
    out = {}
    for name, cmd in cases.items():
        out[name] = best(lambda: subprocess.run(cmd, cwd=REPO, capture_output=True, check=True), reps)
    return out


def m9_memory(mib: int, bucket: str) -> dict:
    """Peak RSS of this process during save(blocking) to S3, minus RSS before it."""
    import threading

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    model = build_model(mib)
    ckpt = Checkpointer(model, uri=f"s3://{bucket}/m9", run_id="r", keep=1)
    out = {}
    for label, step in (("first_save", 1), ("steady_save", 2)):
        before = rss()
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.001)

        t = threading.Thread(target=sample)
        t.start()
        ckpt.save(step, blocking=True)
        done.set()
        t.join()
        out[f"{label}_MiB"] = (peak[0] - before) / MiB
    out["state_MiB"] = mib
    out["target_MiB"] = mib + 256
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 MiB, 3 trials: a smoke run")
    p.add_argument("--sizes", default=None, help="comma-separated MiB (default 64,256; --quick 64)")
    p.add_argument("--trials", type=int, default=None, help="SIGTERM trials (default 20; --quick 3)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    p.add_argument("--only", default=None, help="comma-separated metrics to run, e.g. M5,M6,M7,M8 (default all)")
    args = p.parse_args()
    only = set(args.only.upper().split(",")) if args.only else None

    def want(metric: str) -> bool:
        return only is None or metric in only

    sizes = [int(s) for s in (args.sizes or ("64" if args.quick else "64,256")).split(",")]
    trials = args.trials or (3 if args.quick else 20)
    reps = 3 if args.quick else 5
    torch.set_num_threads(1)

    os.environ.update(CREDENTIALS)
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                                 "python": platform.python_version()},
                     "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                              text=True).stdout.strip(), "sizes": {}}
    with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        bucket = "bench"
        boto3.client("s3").create_bucket(Bucket=bucket)
        for mib in sizes:
            r = results["sizes"][str(mib)] = {}
            if want("M1"):
                r["M1"] = m1_stall(mib, tmp, reps)
            if want("M3") or want("M4") or want("M2"):
                r["M3"] = m3_upload(mib, tmp, bucket, reps)
            if want("M4"):
                r["M4"] = m4_sigterm(mib, bucket, trials, 30.0, r["M3"]["boto3_MiBps"], dict(os.environ))
            if want("M2"):
                r["M2"] = m2_overhead(mib, f"s3://{bucket}/m2", r["M3"]["ours_s"], 30 if args.quick else 120)
                local_save_s = best(lambda: Checkpointer(build_model(mib), uri=os.path.join(tmp, "m2s"), run_id="r",
                                                         keep=1).save(1, blocking=True), 2)
                r["M2_local"] = m2_overhead(mib, os.path.join(tmp, "m2"), local_save_s, 30 if args.quick else 120)
            if want("M5"):
                r["M5"] = m5_restore(mib, tmp, bucket, reps)
                r["M5_recovery"] = m5_recovery(mib, bucket, tmp, dict(os.environ))
            if want("M9"):
                r["M9"] = m9_memory(mib, bucket)
            print_size(mib, r)
        if want("M6"):
            results["M6"] = m6_redone(bucket, dict(os.environ), 2 if args.quick else 10)
        if want("M7"):
            results["M7"] = m7_runtime(100, 2) if args.quick else m7_runtime(600, 5)
        if want("M8"):
            results["M8"] = m8_launcher(reps)
        print_global(results)
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, time.strftime("%Y%m%d-%H%M%S") + ".json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out}")


def print_size(mib: int, r: dict) -> None:
    print(f"\n== {mib} MiB state ==")
    if "M1" in r:
        m1 = r["M1"]
        print(f"M1 stall per save      {m1['stall_s'] * 1000:8.1f} ms  vs torch.save+fsync "
              f"{m1['torch_save_fsync_s'] * 1000:8.1f} ms  ratio {m1['ratio']:.3f}  (target <= {m1['target']})")
    if "M3" in r:
        m3 = r["M3"]
        print(f"M3 save->committed     {m3['ours_MiBps']:8.1f} MiB/s vs boto3 upload_file {m3['boto3_MiBps']:.1f} MiB/s"
              f"  ratio {m3['ratio_vs_boto3']:.2f} (target >= 0.9)")
        print(f"   s3fs put_file       {m3['s3fs_MiBps']:8.1f} MiB/s;  DCP FsspecWriter {m3['dcp_MiBps']:.1f} MiB/s"
              f"  ours/DCP {m3['ratio_vs_dcp']:.2f} (target >= 1.5)")
    if "M4" in r:
        m4 = r["M4"]
        print(f"M4 SIGTERM->committed  median {m4['median_s']:.2f} s, max {m4['max_s']:.2f} s over {m4['trials']} "
              f"trials, success {m4['success_rate'] * 100:.0f}%  (target 100%, <= {m4['target_s']:.2f} s)")
    for label, key in (("to moto S3", "M2"), ("to local disk", "M2_local")):
        if key in r:
            m = r[key]
            print(f"M2 overhead {label:<14} {m['overhead'] * 100:+.1f}%  ({m['steps']} steps of "
                  f"{m['step_s'] * 1000:.0f} ms, a checkpoint every {m['every_k']})  (target <= 2%)")
    if "M5" in r:
        m5 = r["M5"]
        print(f"M5 restore from S3     {m5['ours_s3_s']:.2f} s vs boto3 download+load {m5['boto3_download_load_s']:.2f} s "
              f"(x{m5['ratio_vs_boto3']:.2f}); vs local disk {m5['ours_local_s']:.2f} s (x{m5['ratio_vs_local']:.2f})")
    if "M5_recovery" in r:
        m = r["M5_recovery"]
        for where in ("s3", "local"):
            ph = m[where]
            print(f"M5 recovery ({where:<5})   detection {ph['detection_s']:.2f} s, restart {ph['restart_s']:.2f} s, "
                  f"download+load {ph['download_load_s']:.2f} s, first step {ph['first_step_s']:.2f} s; "
                  f"start->first step {ph['start_to_first_step_s']:.2f} s, kill->first step "
                  f"{ph['kill_to_first_step_s']:.2f} s")
        print(f"   S3 restart vs the same restart from local disk x{m['ratio_vs_local_start']:.2f} "
              f"(target <= {m['target']})")
    if "M9" in r:
        m9 = r["M9"]
        print(f"M9 peak RSS growth     first save {m9['first_save_MiB']:.0f} MiB, later saves "
              f"{m9['steady_save_MiB']:.0f} MiB  (target <= {m9['target_MiB']} MiB)")


def print_global(results: dict) -> None:
    print("\n== across sizes ==")
    for sig, v in results.get("M6", {}).items():
        print(f"M6 steps redone {sig:<8} mean {v['mean']:.1f}, max {v['max']} over {v['trials']} trials "
              f"(target <= {v['target']}; checkpoint every 20 steps)")
    if "M7" in results:
        m7 = results["M7"]
        print(f"M7 runtime overhead    steps/s under trainer run / bare torchrun: median of {m7['reps']} "
              f"interleaved reps {m7['ratio']:.3f} (target >= 0.99); the Checkpointer alone under torchrun "
              f"{m7['api_ratio']:.3f}; bare torchrun {statistics.median(m7['runs_steps_per_s']['bare']):.1f} steps/s")
        for k, v in sorted(m7["step_end_by_max_stride"].items()):
            print(f"   step_end, agreeing at most every {k} step(s): {v['ms_per_call']:.3f} ms per call, "
                  f"{v['ms_per_call'] / v['ms_per_step']:.1%} of a step")
    if "M8" in results:
        print("M8 launcher            " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in results["M8"].items()))


if __name__ == "__main__":
    main()
