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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
        ours_t.append(timed(lambda: ckpt.save(i + 1, blocking=True)))
        raw_t.append(timed(lambda: s3.upload_file(path, bucket, f"raw/{uuid.uuid4().hex}")))
    ours, raw = statistics.median(ours_t), statistics.median(raw_t)

    import s3fs

    fs = s3fs.S3FileSystem()
    s3fs_put = best(lambda: fs.put_file(path, f"{bucket}/s3fs/{uuid.uuid4().hex}"), reps)

    from torch.distributed.checkpoint import FsspecWriter, save

    sd = model.state_dict()
    dcp = best(lambda: save(sd, storage_writer=FsspecWriter(f"s3://{bucket}/dcp/{uuid.uuid4().hex}")), reps)
    mbps = lambda s: nbytes / MiB / s  # noqa: E731
    return {"bytes": nbytes, "ours_s": ours, "boto3_upload_file_s": raw, "s3fs_put_file_s": s3fs_put,
            "dcp_fsspecwriter_s": dcp, "ours_MiBps": mbps(ours), "boto3_MiBps": mbps(raw),
            "s3fs_MiBps": mbps(s3fs_put), "dcp_MiBps": mbps(dcp), "ratio_vs_boto3": raw / ours,
            "ratio_vs_dcp": dcp / ours, "targets": {"vs_boto3": 0.9, "vs_dcp": 1.5}}


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
        latest = boto3.client("s3").get_object(Bucket=bucket, Key=f"m4/{run_id}/{contract.LATEST_NAME}")
        committed = rc == contract.ExitCode.PREEMPTED and int(latest["Body"].read()) > 0
        ok += committed
        times.append(elapsed)
    nbytes = mib * MiB
    budget = 1.2 * nbytes / MiB / boto3_MiBps + 1.0
    return {"trials": trials, "success_rate": ok / trials, "median_s": statistics.median(times), "max_s": max(times),
            "target_s": budget, "grace_s": grace}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 MiB, 3 trials: a smoke run")
    p.add_argument("--sizes", default=None, help="comma-separated MiB (default 64,256; --quick 64)")
    p.add_argument("--trials", type=int, default=None, help="SIGTERM trials (default 20; --quick 3)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    args = p.parse_args()
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
            r["M1"] = m1_stall(mib, tmp, reps)
            r["M3"] = m3_upload(mib, tmp, bucket, reps)
            r["M4"] = m4_sigterm(mib, bucket, trials, 30.0, r["M3"]["boto3_MiBps"], dict(os.environ))
            print_size(mib, r)
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, time.strftime("%Y%m%d-%H%M%S") + ".json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out}")


def print_size(mib: int, r: dict) -> None:
    m1, m3, m4 = r["M1"], r["M3"], r["M4"]
    print(f"\n== {mib} MiB state ==")
    print(f"M1 stall per save      {m1['stall_s'] * 1000:8.1f} ms  vs torch.save+fsync {m1['torch_save_fsync_s'] * 1000:8.1f} ms"
          f"  ratio {m1['ratio']:.3f}  (target <= {m1['target']})")
    print(f"M3 save->committed     {m3['ours_MiBps']:8.1f} MiB/s vs boto3 upload_file {m3['boto3_MiBps']:.1f} MiB/s"
          f"  ratio {m3['ratio_vs_boto3']:.2f} (target >= 0.9)")
    print(f"   s3fs put_file       {m3['s3fs_MiBps']:8.1f} MiB/s;  DCP FsspecWriter {m3['dcp_MiBps']:.1f} MiB/s"
          f"  ours/DCP {m3['ratio_vs_dcp']:.2f} (target >= 1.5)")
    print(f"M4 SIGTERM->committed  median {m4['median_s']:.2f} s, max {m4['max_s']:.2f} s over {m4['trials']} trials,"
          f" success {m4['success_rate'] * 100:.0f}%  (target 100%, <= {m4['target_s']:.2f} s)")


if __name__ == "__main__":
    main()
