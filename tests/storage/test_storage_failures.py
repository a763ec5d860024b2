"""Storage failures told apart: a read error is waited out, a configuration error is permanent.

Real torchrun (2 gloo ranks) against moto's S3 server through the fault proxy, whose
FaultRules fail only some request kinds for a bounded count; and servers that check
credentials: a second moto (tests/s3.authenticating_moto) and MinIO. The configuration
errors are the same on both: each server says them in its own way.
"""

from __future__ import annotations

import time

import pytest
import torch

from tests.helpers import read_json, run
from tests.s3 import authenticating_moto, minio_as_auth_server
from tests.storage.conftest import SERVERS
from tests.storage.test_s3_checkpoints import STEPS, args, latest
from trainer.checkpoint import Checkpointer
from trainer.errors import StorageConfigError

pytestmark = pytest.mark.storage

#: GETs of checkpoint data files (state.pt, rank-0000R.pt), not `latest` or a manifest.
DATA_GETS = r"/step-\d+/[^/]+\.pt$"


def completed_run(tmp_path, s3_env, env) -> str:
    """A run that committed steps 60, 80 and 100 (`latest` 100); the path of its result file."""
    result = str(tmp_path / "result.json")
    r = run(args(s3_env, result), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert latest(s3_env) == STEPS
    return result


def test_a_burst_of_read_errors_is_waited_out_on_the_newest_step_not_fallen_back_from(tmp_path, s3_env,
                                                                                       fault_proxy):
    fault_proxy.rate = 0.0
    env = {**s3_env["env"], "AWS_MAX_ATTEMPTS": "2"}  # each read gives up fast, so restore's own policy decides
    result = completed_run(tmp_path, s3_env, env)
    # 30 failed GETs: the supervisor's prefetch and four of local rank 0's reads (6 GETs each). The old
    # restore called each such step unusable and walked back through 80 and 60 to a fresh start.
    burst = fault_proxy.fail(("GET",), DATA_GETS, status=500, code="InternalError", count=30)
    r = run(args(s3_env, result, "--storage-timeout", "120"), env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert burst.hits == 30
    assert read_json(result)["resumed_from"] == STEPS, out
    assert "falling back" not in out and "verified unusable" not in out
    assert "a storage error, not a bad checkpoint, so no fallback" in out and "until " in out, out
    assert latest(s3_env) == STEPS


def test_an_outage_longer_than_the_storage_timeout_exits_201_with_latest_untouched(tmp_path, s3_env, fault_proxy):
    fault_proxy.rate = 0.0
    env = {**s3_env["env"], "AWS_MAX_ATTEMPTS": "2"}
    result = completed_run(tmp_path, s3_env, env)
    outage = fault_proxy.fail(("GET",), DATA_GETS, status=503, code="SlowDown")  # no end
    t0 = time.monotonic()
    r = run(args(s3_env, result, "--storage-timeout", "8"), env=env)
    elapsed = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 201, out
    assert "could not read checkpoint step-000000100" in out and "for 8s (--storage-timeout)" in out, out
    assert "`latest` is untouched" in out and "exit 201 (infra; retryable)" in out, out
    assert "falling back" not in out and "resuming after" not in out
    assert latest(s3_env) == STEPS  # nothing went backwards
    assert outage.hits > 0
    assert elapsed < 8 + 60, elapsed  # the deadline, plus start-up and one last read on a busy 2-core machine
    print(f"outage run: exit 201 after {elapsed:.1f}s with --storage-timeout 8")


def _the_one_line(out: str) -> str:
    """The runtime's final line of an exit 2, which must be the only one."""
    final = [line for line in out.splitlines() if "; exit 2 (" in line]
    assert len(final) == 1, out
    assert "permanent" in final[0] and "Traceback" not in out, out
    return final[0]


def test_a_bucket_that_does_not_exist_exits_2_at_once_with_one_line_naming_it(tmp_path, each_s3_env):
    result = str(tmp_path / "result.json")
    argv = [a.replace(each_s3_env["bucket"], "no-such-bucket-kt") for a in args(each_s3_env, result)]
    t0 = time.monotonic()
    r = run(argv, env=each_s3_env["env"])
    elapsed = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    final = _the_one_line(out)
    assert "s3://no-such-bucket-kt" in final and "NoSuchBucket" in final and "create it" in final, final
    print(f"NoSuchBucket on {each_s3_env['server']}: exit 2 after {elapsed:.1f}s")


@pytest.fixture(scope="module", params=SERVERS)
def auth_s3(request):
    """A server that checks credentials: the authenticating moto, or MinIO (with no key lacking permissions)."""
    if request.param == "minio":
        yield minio_as_auth_server(request.getfixturevalue("minio_endpoint"))
        return
    with authenticating_moto() as server:
        yield server


def _use(monkeypatch, server, key_id, secret):
    monkeypatch.setenv("AWS_ENDPOINT_URL", server["url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)


# MinIO has no key without permissions here (tests/s3.minio_as_auth_server): AccessDenied on moto only.
@pytest.mark.parametrize("auth_s3,who,code", [
    *((server, "unknown key", "InvalidAccessKeyId") for server in SERVERS),
    *((server, "wrong secret", "SignatureDoesNotMatch") for server in SERVERS),
    ("moto", "no permission", "AccessDenied"),
], indirect=["auth_s3"])
def test_refused_credentials_are_a_configuration_error_not_an_outage(auth_s3, monkeypatch, who, code):
    key_id, secret = {"unknown key": ("AKIAKUBETRAINNOBODY0", "x"), "wrong secret": (auth_s3["trainer"][0], "wrong"),
                      "no permission": auth_s3["nobody"]}[who]
    _use(monkeypatch, auth_s3, key_id, secret)
    uri = f"s3://{auth_s3['bucket']}/ckpts"
    t0 = time.monotonic()
    with pytest.raises(StorageConfigError) as e:
        Checkpointer(torch.nn.Linear(4, 4), uri=uri, run_id="auth").restore()
    assert code in str(e.value) and f"s3://{auth_s3['bucket']}" in str(e.value), e.value
    assert time.monotonic() - t0 < 10  # not retried: the same request fails the same way
    # A save with the same credentials: refused as permanent at once, not counted as one of 3 failures.
    with pytest.raises(StorageConfigError, match=code):
        Checkpointer(torch.nn.Linear(4, 4), uri=uri, run_id="auth").save(1, blocking=True)


def test_the_credential_checking_server_accepts_the_right_key(auth_s3, monkeypatch):
    _use(monkeypatch, auth_s3, *auth_s3["trainer"])
    uri = f"s3://{auth_s3['bucket']}/ckpts"
    Checkpointer(torch.nn.Linear(4, 4), uri=uri, run_id="ok").save(3, blocking=True)
    assert Checkpointer(torch.nn.Linear(4, 4), uri=uri, run_id="ok").restore() == 3


@pytest.mark.parametrize("who,code", [("wrong secret", "SignatureDoesNotMatch"), ("unknown key", "InvalidAccessKeyId")])
def test_refused_credentials_exit_2_through_the_runtime_with_one_line(tmp_path, auth_s3, who, code):
    key_id, secret = {"wrong secret": (auth_s3["trainer"][0], "not-the-secret"),
                      "unknown key": ("AKIAKUBETRAINNOBODY0", "not-the-secret")}[who]
    env = {"AWS_ENDPOINT_URL": auth_s3["url"], "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2"}
    result = str(tmp_path / "result.json")
    r = run(["--nproc-per-node", "2", "--checkpoint", f"s3://{auth_s3['bucket']}/ckpts", "--run-id", "exp",
             "examples/train.py", "--steps", "5", "--result", result], env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    final = _the_one_line(out)
    assert code in final and f"s3://{auth_s3['bucket']}" in final, final
    assert "not-the-secret" not in out
    if who == "wrong secret":
        assert "AWS_SECRET_ACCESS_KEY" in final, final


def test_sigterm_while_restore_waits_out_an_outage_exits_143_at_once_and_says_nothing_committed(tmp_path, s3_env,
                                                                                                fault_proxy):
    import signal

    from tests.helpers import start, wait_for

    fault_proxy.rate = 0.0
    env = {**s3_env["env"], "AWS_MAX_ATTEMPTS": "2"}
    result = completed_run(tmp_path, s3_env, env)
    fault_proxy.fail(("GET",), DATA_GETS, status=503, code="SlowDown")
    log_path = tmp_path / "log"
    proc = start(args(s3_env, result, "--storage-timeout", "300", "--grace-seconds", "60"), env=env,
                 log_path=str(log_path))
    try:
        wait_for(lambda: "reading it again in" in log_path.read_text(), 120, "restore to wait out the outage")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    assert rc == 143, log
    assert elapsed < 30, elapsed  # not the 60 s grace period: restore noticed the stop between reads
    assert "stop requested while restore waited" in log
    assert "exit 143 (stopped (SIGTERM), no checkpoint committed by this run; retryable)" in log, log
    assert latest(s3_env) == STEPS
    print(f"SIGTERM during the restore's wait: exit 143 after {elapsed:.1f}s")
