"""`launch`'s preflight warning against moto's S3: a bucket without the rule gets one line with the
command, and the rule that command adds silences it."""

from __future__ import annotations

import json
import shlex

import pytest

from launcher.job import bucket_lifecycle as bl

pytestmark = pytest.mark.storage


def test_the_warning_comes_until_the_command_it_names_is_applied(s3_env, capsys):
    uri = f"s3://{s3_env['bucket']}/ckpts"
    line = bl.warn_without_abort_rule(uri)
    assert line is not None and line in capsys.readouterr().err
    cmd = shlex.split(line.split("add it with: ", 1)[1])
    s3_env["client"].put_bucket_lifecycle_configuration(Bucket=cmd[4], LifecycleConfiguration=json.loads(cmd[6]))
    assert bl.warn_without_abort_rule(uri) is None


def test_a_bucket_that_does_not_exist_gets_no_warning(s3_env):
    assert bl.warn_without_abort_rule("s3://no-such-bucket-here/ckpts") is None
