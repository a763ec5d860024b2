"""The start's sweep of multipart uploads a killed save left open, on every S3 server.

AWS S3 and moto list a folder's uploads by prefix; MinIO lists uploads only by exact key (its
ListMultipartUploads takes the Prefix as one object's name), so on MinIO the sweep also asks,
key by key, for the files a cut save may have left open (trainer/checkpoint/sweep.py).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from tests.helpers import EXAMPLE, assert_no_workers, run, start, wait_for, worker_pids, worker_rank
from tests.s3 import FaultProxy
from trainer import contract
from trainer.checkpoint import Checkpointer
from trainer.storage.s3 import S3Storage

pytestmark = pytest.mark.storage


def open_uploads(s3_env, key: str) -> list[str]:
    """The upload IDs the server lists for exactly `key` (every server answers this one alike)."""
    ups = s3_env["client"].list_multipart_uploads(Bucket=s3_env["bucket"], Prefix=key).get("Uploads", [])
    return [u["UploadId"] for u in ups if u["Key"] == key]


def listed_under_folder(s3_env, folder: str) -> list[str]:
    ups = s3_env["client"].list_multipart_uploads(Bucket=s3_env["bucket"], Prefix=folder).get("Uploads", [])
    return [u["Key"] for u in ups]


def test_restore_aborts_the_multipart_uploads_an_earlier_attempt_left_behind(each_s3_env):
    client, bucket = each_s3_env["client"], each_s3_env["bucket"]
    # What a SIGKILL in the middle of state.pt's upload leaves: the rank file the save wrote first, an open upload.
    client.put_object(Bucket=bucket, Key="ckpts/mp/step-000000020/rank-00000.pt", Body=b"rank state")
    key = "ckpts/mp/step-000000020/state.pt"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * (5 << 20))
    other_key = "ckpts/other-run/step-000000020/state.pt"
    other = client.create_multipart_upload(Bucket=bucket, Key=other_key)["UploadId"]
    time.sleep(1.1)  # S3 times have second resolution
    uri = f"s3://{bucket}/ckpts"
    if each_s3_env["server"] == "minio":
        # MinIO lists nothing for the run's folder: the folder-prefix sweep alone aborted nothing here.
        assert listed_under_folder(each_s3_env, "ckpts/mp/") == []
        assert S3Storage(uri).abort_stale_uploads(f"{uri}/mp", time.time()) == []
    else:
        assert listed_under_folder(each_s3_env, "ckpts/mp/") == [key]
    assert open_uploads(each_s3_env, key) == [upload]

    assert Checkpointer(torch.nn.Linear(4, 4), uri=uri, run_id="mp").restore() == 0
    assert open_uploads(each_s3_env, key) == []
    assert open_uploads(each_s3_env, other_key) == [other]  # another run's upload is that run's business


def test_an_upload_open_when_its_rank_was_sigkilled_is_aborted_by_the_next_start(tmp_path, each_s3_env):
    """A real save SIGKILLed mid-upload: rank 0's state.pt (about 18 MiB: multipart) is begun, its parts
    (and the transfer manager's abort) refused through a proxy, so whenever the kill lands the upload
    is open; the next start's sweep aborts it."""
    s3 = each_s3_env
    proxy = FaultProxy(s3["url"], rate=0.0)
    try:
        # Every request to state.pt but the first is a part upload or the abort of one: refused, with no end.
        proxy.fail(("PUT", "DELETE"), r"/ckpts/exp/step-\d+/state\.pt$", status=503, code="SlowDown")
        result = str(tmp_path / "result.json")
        argv = ["--nproc-per-node", "2", "--checkpoint", f"s3://{s3['bucket']}/ckpts", "--run-id", "exp",
                "--checkpoint-every-steps", "10", EXAMPLE, "--steps", "20", "--samples", "512", "--hidden", "1536",
                "--result", result]
        log = tmp_path / "log"
        # Many retries of each refused part: the kill lands while the first transfer still retries (a
        # transfer given up on is begun again, so a late kill finds two uploads open: also swept).
        proc = start(argv, env={**s3["env"], "AWS_ENDPOINT_URL": proxy.url, "AWS_MAX_ATTEMPTS": "20"},
                     log_path=str(log))
        try:
            wait_for(lambda: any(m == "POST" and p.endswith("/state.pt?uploads") for m, p in list(proxy.forwarded)),
                     180, "rank 0 to begin state.pt's multipart upload")
            os.kill(next(p for p in worker_pids(result) if worker_rank(p) == 0), signal.SIGKILL)
            assert proc.wait(60) == 137, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        proxy.close()
    assert "rank 0 was killed by SIGKILL" in log.read_text()
    assert_no_workers(result)
    key = f"ckpts/exp/{contract.step_dir_name(10)}/state.pt"
    left = open_uploads(s3, key)
    assert left, "the kill left no open upload: nothing to sweep"
    if s3["server"] == "minio":
        assert listed_under_folder(s3, "ckpts/exp/") == []  # invisible to a sweep by folder prefix

    r = run(argv, env=s3["env"])  # straight to the server
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert (f"aborted {len(left)} incomplete upload(s) an earlier attempt left under s3://{s3['bucket']}/ckpts/exp: "
            f"{key}\n") in out, out
    assert open_uploads(s3, key) == []
