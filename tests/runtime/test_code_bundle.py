"""The pod's path: `python -m trainer run --code BUNDLE --code-sha256 X train.py`, as `launch` renders it."""

from __future__ import annotations

import os

import pytest

from launcher.job.bundle import make_bundle
from tests.helpers import EXAMPLE, run

pytestmark = pytest.mark.runtime


@pytest.fixture
def bundle(tmp_path):
    b = make_bundle(EXAMPLE)
    path = tmp_path / "code.tar.gz"
    path.write_bytes(b.data)
    return str(path), b


def test_the_runtime_unpacks_a_verified_bundle_and_runs_the_script_from_it(tmp_path, bundle):
    path, b = bundle
    result = str(tmp_path / "r.json")
    r = run(["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ck"), "--code", path, "--code-sha256", b.sha256,
             "--workdir", str(tmp_path / "work"), b.entrypoint, "--steps", "20", "--samples", "512", "--hidden", "16",
             "--result", result])
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.path.exists(result) and os.path.isfile(tmp_path / "work" / "train.py")
    assert os.path.isdir(tmp_path / "ck" / "train")  # the checkpoint path resolved before the chdir


def test_a_bundle_with_another_checksum_never_runs(tmp_path, bundle):
    path, b = bundle
    r = run(["--checkpoint", str(tmp_path / "ck"), "--code", path, "--code-sha256", "f" * 64, b.entrypoint])
    assert r.returncode == 2
    assert "it changed since `launch` shipped it" in r.stderr and len(r.stderr.strip().splitlines()) == 1
