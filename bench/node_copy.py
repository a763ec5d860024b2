"""node-copy: restore() from the node copy vs from S3 (moto), in one process, on the same state.

The node copy is what an in-place restart restores from (trainer/checkpoint/node_copy.py): a save
keeps its bytes on the node, and restore reads them there once their sha256 matches the manifest.
Both restores read `latest` and the manifest from S3; only where the state's bytes come from differs.
Also the blocking save with and without the node copy's second write (the tee beside the upload).
"""

from __future__ import annotations

import os
import time

from bench.context import Context
from bench.timing import median_time, timed
from bench.workload import build_model
from trainer.checkpoint import Checkpointer, node_copy


def run(ctx: Context) -> dict:
    uri, node_dir = f"s3://{ctx.bucket}/node-copy-{ctx.mib}", os.path.join(ctx.tmp, f"node-copy-{ctx.mib}")
    model = build_model(ctx.mib)
    save_off = timed(lambda: Checkpointer(model, uri=uri, run_id="r", node_copy_max_bytes=0).save(1, blocking=True))
    on = Checkpointer(model, uri=uri, run_id="r", node_copy_dir=node_dir, node_copy_max_bytes=4 << 30)
    save_on = timed(lambda: on.save(2, blocking=True))
    assert on.run.node is not None and node_copy.kept_bytes(on.run.node) > ctx.mib << 20, "nothing was kept"
    target = build_model(ctx.mib)
    reps = max(1, ctx.reps if ctx.mib < 512 else 1)  # a GiB from moto takes a while on a small machine

    def from_s3() -> None:
        assert Checkpointer(target, uri=uri, run_id="r", node_copy_max_bytes=0).restore() == 2

    def from_node() -> None:
        assert Checkpointer(target, uri=uri, run_id="r", node_copy_dir=node_dir,
                            node_copy_max_bytes=4 << 30).restore() == 2

    s3_s = median_time(from_s3, reps)
    node_s = median_time(from_node, reps)
    return {"s3_s": s3_s, "node_copy_s": node_s, "ratio": s3_s / node_s, "reps": reps,
            "save_s3_s": save_off, "save_s3_and_node_copy_s": save_on, "target": 10.0,
            "load_average": os.getloadavg()[0], "at": time.strftime("%Y-%m-%d %H:%M:%S")}
