"""Bad flags, URIs and env: one line on stderr, exit 2, nothing started."""

import os
import subprocess
import sys

import pytest

from tests.helpers import EXAMPLE, REPO


def trainer(*args, env=None):
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


@pytest.mark.parametrize("args,env,needle", [
    (["run"], {}, "required: script"),
    (["run", "missing.py"], {}, "'missing.py' does not exist"),
    (["run", "--nproc-per-node", "0", EXAMPLE], {}, "--nproc-per-node must be >= 1"),
    (["run", "--nproc-per-node", "two", EXAMPLE], {}, "invalid int value"),
    (["run", "--checkpoint", "nope://bucket/x", EXAMPLE], {}, "unknown scheme 'nope'"),
    (["run", "--checkpoint", "s3:///x", EXAMPLE], {}, "has no bucket"),
    (["run", "--keep", "0", EXAMPLE], {}, "--keep must be >= 1"),
    (["run", "--grace-seconds", "1", EXAMPLE], {}, "--grace-seconds must be >="),
    (["run", "--hang-timeout", "nan", EXAMPLE], {}, "--hang-timeout must be >= 0"),
    (["run", "--run-id", "a/b", EXAMPLE], {}, "--run-id 'a/b'"),
    (["run", "--preemption-url", "http://x/latest", EXAMPLE], {}, "neither an AWS"),
    (["run", EXAMPLE], {"KUBETRAIN_CHECKPOINT_KEEP": "many"}, "KUBETRAIN_CHECKPOINT_KEEP='many'"),
    (["walk"], {}, "invalid choice: 'walk'"),
], ids=lambda v: str(v)[:40])
def test_bad_input_is_one_line_and_exit_2(args, env, needle):
    r = trainer(*args, env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and "Traceback" not in r.stderr


def test_help_lists_every_flag_with_its_env_var_and_the_exit_codes():
    r = trainer("run", "--help")
    assert r.returncode == 0
    for env in ("KUBETRAIN_CHECKPOINT_URI", "KUBETRAIN_GRACE_SECONDS", "KUBETRAIN_HANG_TIMEOUT",
                "KUBETRAIN_PREEMPTION_URL", "KUBETRAIN_NPROC_PER_NODE"):
        assert env in r.stdout
    assert "143" in r.stdout and "137" in r.stdout


def test_an_env_var_sets_a_flag_and_the_flag_wins(tmp_path):
    from trainer.cli import parse_run_config

    cfg = parse_run_config(["run", EXAMPLE], {"KUBETRAIN_CHECKPOINT_KEEP": "7", "KUBETRAIN_GRACE_SECONDS": "60"})
    assert (cfg.keep, cfg.grace_seconds) == (7, 60.0)
    cfg = parse_run_config(["run", "--keep", "2", EXAMPLE], {"KUBETRAIN_CHECKPOINT_KEEP": "7"})
    assert cfg.keep == 2
    assert cfg.run_id == "train" and os.path.isabs(cfg.checkpoint_uri)
