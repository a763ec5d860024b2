"""`launch --code-uri`: the bundle goes to the object store of the environment `launch` runs in.

Run on moto, then on MinIO, in one process: fsspec caches a filesystem per set of arguments,
made with the endpoint and credentials the environment had at its first use, so without a fresh
one the second server's upload went to the first (or to a server since stopped, as in the node
tier, where the launcher runs in the test process after other tests).
"""

from __future__ import annotations

import pytest

from launcher.job import bundle
from launcher.objectstore import read_json_objects as read_objects

pytestmark = pytest.mark.storage


def test_the_bundle_is_uploaded_to_and_removed_from_this_environments_server(each_s3_env):
    bucket, client = each_s3_env["bucket"], each_s3_env["client"]
    key = "code/job-a/0123456789abcdef.tar.gz"
    bundle.upload(f"s3://{bucket}/{key}", b"bundle" * 1000)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"bundle" * 1000
    bundle.remove(f"s3://{bucket}/{key}")
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    # `launch status` reads the restart ledger the same way.
    client.put_object(Bucket=bucket, Key="ckpts/job-a/attempts/a.json", Body=b"{}")
    assert read_objects(f"s3://{bucket}/ckpts/job-a/attempts") == {"a.json": b"{}"}
