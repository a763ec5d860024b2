"""`launch`'s warning for an s3 bucket without an AbortIncompleteMultipartUpload rule (pure rules);
against moto's S3 in tests/storage/test_bucket_lifecycle_preflight.py."""

from __future__ import annotations

import json
import shlex

from launcher.job import bucket_lifecycle as bl

ABORT = {"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}


def test_only_s3_uris_are_checked():
    assert bl.split_s3_uri("s3://b/ckpts/x/") == ("b", "ckpts/x/")
    assert bl.split_s3_uri("s3a://b") == ("b", "")
    for uri in (None, "", "gs://b/x", "/data/ckpts", "s3://"):
        assert bl.split_s3_uri(uri) is None
        assert bl.warning(uri or "", []) is None


def test_a_rule_counts_when_enabled_and_covering_the_prefix():
    assert bl.aborts_incomplete_uploads([{"Status": "Enabled", "Filter": {}, **ABORT}], "ckpts/")
    assert bl.aborts_incomplete_uploads([{"Status": "Enabled", "Filter": {"Prefix": "ck"}, **ABORT}], "ckpts/")
    assert bl.aborts_incomplete_uploads([{"Status": "Enabled", "Prefix": "", **ABORT}], "ckpts/")
    assert not bl.aborts_incomplete_uploads([{"Status": "Disabled", "Filter": {}, **ABORT}], "ckpts/")
    assert not bl.aborts_incomplete_uploads([{"Status": "Enabled", "Filter": {"Prefix": "other/"}, **ABORT}], "ckpts/")
    assert not bl.aborts_incomplete_uploads([{"Status": "Enabled", "Filter": {"Tag": {"Key": "a", "Value": "b"}},
                                              **ABORT}], "ckpts/")
    assert not bl.aborts_incomplete_uploads([{"Status": "Enabled", "Filter": {},
                                              "Expiration": {"Days": 30}}], "ckpts/")


def test_the_warning_is_one_line_with_the_one_command_that_adds_the_rule():
    line = bl.warning("s3://my-bucket/ckpts", [])
    assert "\n" not in line and line.startswith("launch: warning: bucket s3://my-bucket has no lifecycle rule")
    cmd = shlex.split(line.split("add it with: ", 1)[1])
    assert cmd[:5] == ["aws", "s3api", "put-bucket-lifecycle-configuration", "--bucket", "my-bucket"]
    rule = json.loads(cmd[6])["Rules"][0]
    assert bl.aborts_incomplete_uploads([rule], "ckpts/")
    assert "replaces" not in line
    assert "replaces the bucket's 1 lifecycle rule(s)" in bl.warning("s3://my-bucket/ckpts",
                                                                      [{"Status": "Enabled", "Filter": {}}])
    assert bl.warning("s3://my-bucket/ckpts", [rule]) is None


class _Client:
    def __init__(self, result):
        self.result = result

    def get_bucket_lifecycle_configuration(self, Bucket):
        if isinstance(self.result, Exception):
            raise self.result
        return {"Rules": self.result}


class _ClientError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


def test_a_bucket_that_cannot_be_read_gets_no_warning_and_no_error(capsys):
    assert bl.warn_without_abort_rule("s3://b/x", _Client(_ClientError("AccessDenied"))) is None
    assert bl.warn_without_abort_rule("s3://b/x", _Client(_ClientError("NoSuchLifecycleConfiguration")))
    assert "launch: warning" in capsys.readouterr().err
    assert bl.warn_without_abort_rule("gs://b/x", _Client([])) is None
