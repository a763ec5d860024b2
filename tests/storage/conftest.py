import uuid

import pytest

from tests.s3 import CREDENTIALS, FaultProxy, moto_server


@pytest.fixture(scope="session")
def moto_endpoint():
    with moto_server() as url:
        yield url


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch):
    """Env for boto3 (this process and children) pointing at moto; a fresh bucket per test."""
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": moto_endpoint}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    import boto3

    bucket = f"ckpt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return {"env": env, "bucket": bucket, "client": boto3.client("s3")}


@pytest.fixture
def fault_proxy(moto_endpoint, s3_env, monkeypatch, rng):
    proxy = FaultProxy(moto_endpoint, rate=0.10, seed=rng.randrange(1 << 30))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    s3_env["env"]["AWS_ENDPOINT_URL"] = proxy.url
    yield proxy
    print("fault proxy:", proxy.counts)
    proxy.close()
