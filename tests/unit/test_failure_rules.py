"""The pure rules that tell failures apart: URIs, S3 error codes, read verdicts, exit codes, descendants."""

from __future__ import annotations

import pytest

from launcher.cli import main as launch
from tests.helpers import EXAMPLE
from trainer import contract
from trainer.checkpoint.loader import Corrupt, StepVerdict, read_failure_verdict
from trainer.cli import parse_run_config
from trainer.contract import ExitCode
from trainer.control_folder import Preempted, RankError, RankFailure, TorchrunResult
from trainer.errors import StorageConfigError, StorageError, UsageError
from trainer.storage import s3_error_code, s3_error_kind
from trainer.processes import descendants
from trainer.supervisor import classify

BAD_URIS = [("ftp:://bad", "unknown scheme 'ftp:'"), ("nosuchproto://bucket/x", "unknown scheme 'nosuchproto'"),
            ("s3://", "has no bucket"), ("gs:///prefix", "has no bucket"), ("", "empty")]


@pytest.mark.parametrize("uri,needle", BAD_URIS)
def test_the_contract_names_what_is_wrong_with_a_checkpoint_uri(uri, needle):
    assert needle in contract.checkpoint_uri_problem(uri)


@pytest.mark.parametrize("uri", ["s3://b/c", "s3a://b", "gs://b/x", "az://container/x", "memory://x", "/data/ck",
                                 "relative/ck", "file:///data/ck"])
def test_the_contract_accepts_what_the_runtime_opens(uri):
    assert contract.checkpoint_uri_problem(uri) is None


@pytest.mark.parametrize("uri,needle", BAD_URIS[:3])
@pytest.mark.parametrize("dry_run", [True, False])
def test_launch_refuses_a_bad_checkpoint_uri_before_creating_anything(uri, needle, dry_run, capsys, monkeypatch):
    from launcher.job import bundle
    from launcher.k8s import api, jobs, preflight

    def nothing(*a, **k):
        raise AssertionError("launch reached the cluster with a bad --checkpoint")

    for module, name in ((api, "connect"), (preflight, "preflight"), (jobs, "create_job"), (bundle, "upload")):
        monkeypatch.setattr(module, name, nothing)
    code = launch([EXAMPLE, "--gpus", "8", "--checkpoint", uri, *(["--dry-run"] if dry_run else [])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_launch_local_refuses_a_bad_checkpoint_uri_before_starting_the_runtime(capsys):
    code = launch([EXAMPLE, "--local", "--nproc", "1", "--checkpoint", "nosuchproto://bucket/x"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown scheme 'nosuchproto'" in err, err


def test_the_runtime_refuses_the_same_uris_with_exit_2(tmp_path):
    for uri, needle in BAD_URIS[:3]:
        with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
            parse_run_config(["run", "--checkpoint", uri, EXAMPLE], {})


class _ClientError(Exception):
    def __init__(self, code):
        super().__init__(f"An error occurred ({code}) when calling the GetObject operation: ...")
        self.response = {"Error": {"Code": code}}


@pytest.mark.parametrize("code,kind", [
    ("NoSuchBucket", "permanent"), ("InvalidAccessKeyId", "permanent"), ("SignatureDoesNotMatch", "permanent"),
    ("AccessDenied", "permanent"), ("403", "permanent"), ("NoSuchKey", "missing"), ("404", "missing"),
    ("SlowDown", "transient"), ("InternalError", "transient"), ("503", "transient"), ("RequestTimeout", "transient"),
    ("ThrottlingException", "transient"), (None, "transient"),
])
def test_s3_errors_are_classified(code, kind):
    assert s3_error_kind(code) == kind


def test_the_code_is_read_from_a_client_error_and_from_the_transfer_managers_message():
    assert s3_error_code(_ClientError("NoSuchBucket")) == "NoSuchBucket"
    upload_failed = Exception("Failed to upload x to b/k: An error occurred (AccessDenied) when calling the "
                              "PutObject operation: Access Denied")  # boto3's S3UploadFailedError keeps only this
    assert s3_error_code(upload_failed) == "AccessDenied"
    assert s3_error_code(ConnectionResetError("reset")) is None


@pytest.mark.parametrize("exc,verdict", [
    (StorageError("read failed after 3 attempts: 500"), StepVerdict.TRANSIENT),
    (ConnectionResetError(), StepVerdict.TRANSIENT), (TimeoutError(), StepVerdict.TRANSIENT),
    (StorageConfigError("NoSuchBucket"), StepVerdict.PERMANENT),
    (Corrupt("sha256"), StepVerdict.UNUSABLE), (FileNotFoundError("x"), StepVerdict.UNUSABLE),
    (RuntimeError("PytorchStreamReader failed"), StepVerdict.UNUSABLE),  # a verified file torch cannot load
])
def test_only_facts_about_the_bytes_condemn_a_step(exc, verdict):
    assert read_failure_verdict(exc) is verdict


def test_agreeing_on_the_worst_verdict_orders_them_as_documented():
    # A step verified bad on any rank is bad even while another rank could not read it; a
    # configuration error ends the restore whatever else was found.
    assert max(StepVerdict.TRANSIENT, StepVerdict.UNUSABLE) is StepVerdict.UNUSABLE
    assert max(StepVerdict.UNUSABLE, StepVerdict.PERMANENT) is StepVerdict.PERMANENT
    assert max(StepVerdict.OK, StepVerdict.TRANSIENT) is StepVerdict.TRANSIENT


def _classify(**kw):
    base = dict(torchrun_rc=1, result=None, errors=[], preempted=None, stop_reason=None, hang=None)
    return classify(**{**base, **kw})


def test_torchrun_refusing_its_arguments_or_an_incompatible_torch_is_permanent():
    o = _classify(torchrun_rc=2, result=TorchrunResult(usage_error="argument --node-rank: invalid int"))
    assert o.code == ExitCode.USAGE and "torchrun refused its arguments" in o.summary
    o = _classify(torchrun_rc=2, result=TorchrunResult(incompatible_torch="torch 2.1: ImportError"))
    assert o.code == ExitCode.USAGE


def test_a_scripts_own_exit_99_never_reads_as_a_crash_loop():
    o = _classify(result=TorchrunResult((RankFailure(1, 99),)))
    assert o.code == ExitCode.USER_ERROR and "reserves for a crash loop" in o.summary
    assert _classify(result=TorchrunResult((RankFailure(1, 98),))).code == 98  # other codes pass through


def test_a_storage_configuration_error_is_permanent_even_after_peers_lost_the_rank():
    errors = [RankError(rank=1, type="DistBackendError", message="peer closed", comm_error=True, time=2),
              RankError(rank=0, type="StorageConfigError", message="checkpoint bucket s3://x: NoSuchBucket: ...",
                        config_error=True, time=1)]
    o = _classify(errors=errors, result=TorchrunResult((RankFailure(0, 1), RankFailure(1, 1))))
    assert o.code == ExitCode.USAGE and "NoSuchBucket" in o.summary


def test_a_stop_before_any_commit_does_not_claim_a_checkpoint():
    o = _classify(stop_reason="SIGTERM", result=TorchrunResult((RankFailure(0, -15),)))
    assert o.code == ExitCode.PREEMPTED
    assert "checkpoint committed" not in (o.meaning or "").replace("no checkpoint committed", "")
    committed = _classify(torchrun_rc=0, preempted=Preempted(step=40, time=0.0), stop_reason="SIGTERM")
    assert committed.meaning is None and "step 40 committed" in committed.summary


def test_descendants_walks_the_whole_tree_below_the_root_only():
    parents = {10: 1, 11: 10, 12: 11, 13: 11, 14: 1, 15: 14, 16: 12}
    assert descendants(10, parents) == [11, 12, 13, 16]
    assert descendants(16, parents) == []
    assert 14 not in descendants(10, parents) and 1 not in descendants(10, parents)


def test_storage_timeout_is_a_flag_and_a_variable_and_must_be_positive():
    assert parse_run_config(["run", EXAMPLE], {}).storage_timeout == contract.DEFAULT_STORAGE_TIMEOUT
    assert parse_run_config(["run", EXAMPLE], {contract.ENV_STORAGE_TIMEOUT: "42"}).storage_timeout == 42
    assert parse_run_config(["run", "--storage-timeout", "7", EXAMPLE],
                            {contract.ENV_STORAGE_TIMEOUT: "42"}).storage_timeout == 7
    with pytest.raises(UsageError, match="--storage-timeout must be > 0"):
        parse_run_config(["run", "--storage-timeout", "0", EXAMPLE], {})


def test_zombie_children_are_the_parents_zombies_but_the_kept_one():
    from trainer.processes import zombie_children

    table = {10: (1, "S"), 11: (10, "Z"), 12: (10, "Z"), 13: (10, "R"), 14: (11, "Z"), 15: (1, "Z")}
    assert zombie_children(10, table) == [11, 12]
    assert zombie_children(10, table, keep=frozenset({11})) == [12]  # torchrun: Popen waits for it


def test_a_backend_error_that_is_no_oserror_is_retried_then_a_storage_error_and_never_touches_random(monkeypatch):
    """gcsfs and adlfs raise plain Exceptions for a 503: a read error, not a verdict on the step."""
    import random

    from trainer import storage
    from trainer.errors import StorageError

    monkeypatch.setattr(storage.retry.time, "sleep", lambda s: None)

    class HttpError(Exception):
        pass

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise HttpError("503 Service Unavailable")
        return b"ok"

    random.seed(5)
    before = random.getstate()
    assert storage.retry_call(flaky, what="read x", retry_on=storage.ANY_BACKEND_ERROR) == b"ok"
    assert random.getstate() == before  # the user's stream, which checkpoints restore, is untouched

    def always():
        raise HttpError("503")

    with pytest.raises(StorageError):
        storage.retry_call(always, what="read x", retry_on=storage.ANY_BACKEND_ERROR)

    def bug():
        raise TypeError("our own bug")

    with pytest.raises(TypeError):  # never retried into a storage error
        storage.retry_call(bug, what="read x", retry_on=storage.ANY_BACKEND_ERROR)
