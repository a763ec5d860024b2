"""The storage tier's S3 servers: moto (every test) and MinIO (the tests parametrized over both).

MinIO is built by cluster/build-minio (scripts/test does it in the background). Where its binary is
missing the MinIO cases are skipped with how to build it, unless KUBETRAIN_REQUIRE_MINIO=1 (set by
.ci/run): then they fail.
"""

import os
import uuid

import pytest

from tests.s3 import CREDENTIALS, MINIO_CREDENTIALS, FaultProxy, minio_exe, minio_server, moto_server

#: The S3 servers a test parametrized over servers (`each_s3_env`) runs against.
SERVERS = ("moto", "minio")


@pytest.fixture(scope="session")
def moto_endpoint():
    with moto_server() as url:
        yield url


@pytest.fixture(scope="session")
def minio_endpoint(tmp_path_factory):
    exe = minio_exe()
    if not os.path.exists(exe):
        reason = (f"storage tier on MinIO: no MinIO binary at {exe}; build it with cluster/build-minio "
                  "(Go, from the module proxy, about 4 minutes cold) or point KUBETRAIN_MINIO_BIN at its folder")
        if os.environ.get("KUBETRAIN_REQUIRE_MINIO") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    with minio_server(exe, str(tmp_path_factory.mktemp("minio"))) as url:
        yield url


def _env_with_new_bucket(monkeypatch, server: str, url: str, credentials: dict) -> dict:
    """Env for boto3 (this process and children) pointing at `url`; a fresh bucket."""
    # No node copy: these tests are about what restores read from the store (its GETs, its corrupt
    # objects, its outages); tests/storage/test_node_copy_s3.py turns it on.
    env = {**credentials, "AWS_ENDPOINT_URL": url, "KUBETRAIN_NODE_COPY_MAX_BYTES": "0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    import boto3

    # A session of its own: boto3's default one keeps the credentials it first found (another server's).
    client = boto3.session.Session().client("s3")
    bucket = f"ckpt-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return {"env": env, "bucket": bucket, "client": client, "server": server, "url": url}


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch):
    """Env for boto3 (this process and children) pointing at moto; a fresh bucket per test."""
    return _env_with_new_bucket(monkeypatch, "moto", moto_endpoint, CREDENTIALS)


@pytest.fixture
def minio_env(minio_endpoint, monkeypatch):
    """As s3_env, on MinIO (its root user's key)."""
    return _env_with_new_bucket(monkeypatch, "minio", minio_endpoint, MINIO_CREDENTIALS)


@pytest.fixture(params=SERVERS)
def each_s3_env(request):
    """s3_env on moto, then minio_env on MinIO: one test, every server."""
    return request.getfixturevalue({"moto": "s3_env", "minio": "minio_env"}[request.param])


@pytest.fixture
def fault_proxy(moto_endpoint, s3_env, monkeypatch, rng):
    proxy = FaultProxy(moto_endpoint, rate=0.10, seed=rng.randrange(1 << 30))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    s3_env["env"]["AWS_ENDPOINT_URL"] = proxy.url
    yield proxy
    print("fault proxy:", proxy.counts)
    proxy.close()
