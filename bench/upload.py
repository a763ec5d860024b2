"""M3: save → committed manifest on S3, vs boto3 upload_file of the same bytes.

Also, on the same bytes: s3fs put_file, and torch DCP's FsspecWriter at its defaults.
"""

from __future__ import annotations

import os
import statistics

import boto3

from bench.context import Context
from bench.stall import torch_save_fsync
from bench.store import delete_prefix
from bench.timing import MiB, median_time, timed
from bench.workload import build_model
from trainer.checkpoint import Checkpointer


def run(ctx: Context) -> dict:
    s3, bucket = boto3.client("s3"), ctx.bucket
    model = build_model(ctx.mib)
    path = os.path.join(ctx.tmp, "m3.pt")
    torch_save_fsync(model.state_dict(), path)
    nbytes = os.path.getsize(path)
    ckpt = Checkpointer(model, uri=f"s3://{bucket}/m3", run_id="r", keep=1)
    ckpt.save(0, blocking=True)  # warm both paths up before timing
    s3.upload_file(path, bucket, "raw/warmup")
    ours_t, raw_t = [], []
    for i in range(ctx.reps):  # interleaved, so drift on a shared machine hits both alike
        ckpt.wait()  # the previous save's prune runs beside training; it is not part of this commit
        ours_t.append(timed(lambda: ckpt.save(i + 1, blocking=True)))
        raw_t.append(timed(lambda: s3.upload_file(path, bucket, "raw/m3")))  # one key: moto keeps every object
    ckpt.close()
    ours, raw = statistics.median(ours_t), statistics.median(raw_t)

    import s3fs

    fs = s3fs.S3FileSystem()
    s3fs_put = median_time(lambda: fs.put_file(path, f"{bucket}/s3fs/m3"), ctx.reps)

    from torch.distributed.checkpoint import FsspecWriter, save

    sd = model.state_dict()
    dcp = median_time(lambda: save(sd, storage_writer=FsspecWriter(f"s3://{bucket}/dcp/m3")), ctx.reps)
    for prefix in ("raw/", "s3fs/", "dcp/"):
        delete_prefix(bucket, prefix)
    mbps = lambda s: nbytes / MiB / s  # noqa: E731
    return {"bytes": nbytes, "ours_s": ours, "boto3_upload_file_s": raw, "s3fs_put_file_s": s3fs_put,
            "dcp_fsspecwriter_s": dcp, "ours_MiBps": mbps(ours), "boto3_MiBps": mbps(raw),
            "s3fs_MiBps": mbps(s3fs_put), "dcp_MiBps": mbps(dcp), "ratio_vs_boto3": raw / ours,
            "ratio_vs_dcp": dcp / ours, "targets": {"vs_boto3": 0.9, "vs_dcp": 1.5}}
