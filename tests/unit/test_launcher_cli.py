"""`launch` input handling: one-line errors and exit 2, fuzzed; project config; code bundles."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.cli import main
from launcher.job.bundle import make_bundle
from tests.helpers import EXAMPLE, REPO
from trainer.codebundle import unpack
from trainer.cli import main as trainer_main
from trainer.contract import ExitCode
from trainer.errors import StorageError, UsageError

FLAGS = ["--gpus", "--gpus-per-node", "--nodes", "--nproc", "--gpu-type", "--gpu-resource", "--cpu", "--memory",
         "--shm", "--image", "--namespace", "--name", "--checkpoint", "--checkpoint-every-steps", "--grace-seconds",
         "--hang-timeout", "--max-restarts", "--max-runtime", "--ttl", "--clean-pod-policy", "--spot",
         "--priority-class", "--gang", "--pvc", "--secret-env", "--env", "--service-account", "--local", "-o",
         "--queue", "--priority"]
VALUES = ["8", "0", "-1", "16", "2:4", "4:2", "x", "", "1.5", "nvidia.com/gpu", "NVIDIA-A100", "s3://b/c", "/data",
          "data:/data", "data:/data:ro", "a:b:c:d", "prefer", "require", "volcano", "None", "yaml", "json", "1e9",
          "K=V", "=V", "KUBETRAIN_X=1", "64Gi", "64GiB", "\x00", "ü", "--", "-", "nan", "inf", "9" * 30, "team-a"]


@contextlib.contextmanager
def in_dir(path):
    cwd = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(cwd)


def run_main(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(FLAGS), st.sampled_from(VALUES), st.text(max_size=12)), max_size=10))
def test_fuzzed_flags_never_traceback(capsys, tokens):
    argv = [EXAMPLE, "--dry-run", *[t for t in tokens if t != "--local"]]
    code, out, err = run_main(argv, capsys)
    assert code in (0, 2), (argv, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("launch: error: "), (argv, err)


CONFIG_VALUES = st.one_of(st.integers(-5, 10**6), st.text(max_size=20), st.booleans(), st.floats(allow_nan=True),
                          st.lists(st.text(max_size=10), max_size=3), st.none())
CONFIG_KEYS = st.sampled_from(["image", "namespace", "checkpoint", "gpus_per_node", "grace_seconds", "pvc", "spot",
                               "secret_env", "shm", "bogus", "max_restarts", "cpu", "gpu-type"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(CONFIG_KEYS, CONFIG_VALUES, max_size=5))
def test_fuzzed_project_config_never_tracebacks(tmp_path_factory, capsys, config):
    import yaml

    d = tmp_path_factory.mktemp("cfg")
    (d / "launch.yaml").write_text(yaml.safe_dump(config))
    with in_dir(d):
        code, out, err = run_main([EXAMPLE, "--gpus", "8", "--checkpoint", "s3://b/c", "--dry-run"], capsys)
    assert code in (0, 2), (config, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("content,needle", [
    ("[tool.kubetrain]\nbogus = 1\n", "unknown setting 'bogus'"),
    ("[tool.kubetrain]\ngpus_per_node = 'eight'\n", "gpus_per_node = 'eight' should be int"),
    ("[tool.kubetrain]\nimage = \n", "cannot read"),
])
def test_bad_pyproject_config_is_named(tmp_path, capsys, content, needle):
    (tmp_path / "pyproject.toml").write_text(content)
    with in_dir(tmp_path):
        code, _, err = run_main([EXAMPLE, "--gpus", "8", "--checkpoint", "s3://b/c", "--dry-run"], capsys)
    assert code == 2 and needle in err and "pyproject.toml" in err


def test_config_supplies_defaults_and_flags_win(tmp_path, capsys, monkeypatch):
    import json

    (tmp_path / "launch.yaml").write_text("image: reg/img:1\nnamespace: team-a\ncheckpoint: s3://team/ckpt\n"
                                          "gpus_per_node: 4\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KUBETRAIN_NAMESPACE", "from-env")
    code, out, err = run_main([EXAMPLE, "--gpus", "8", "--image", "reg/img:2", "--dry-run", "-o", "json"], capsys)
    assert code == 0, err
    job = json.loads(out)[0]
    c = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert job["metadata"]["namespace"] == "from-env" and c["image"] == "reg/img:2"
    assert job["spec"]["nprocPerNode"] == "4"


@pytest.mark.parametrize("argv,needle", [
    (["--gpus", "8", "--local"], "--gpus 8 asked for, 0 GPU(s) here; use --nproc"),
    (["--local", "--image", "x"], "--image has no meaning with --local"),
    (["--local", "--nodes", "2"], "--local runs on this one machine"),
    (["--gpus", "8"], "needs --checkpoint"),
    (["--gpus", "8", "--checkpoint", "s3://b/c", "--name", "Bad_Name"], "--name 'Bad_Name'"),
    (["--gpus", "8", "--checkpoint", "s3://b/c", "--env", "KUBETRAIN_RUN_ID=x"], "set by kubetrain"),
    (["--nodes", "2:1", "--checkpoint", "s3://b/c"], "MIN <= MAX"),
    # --gpus that do not split over --nodes: the values that do are named
    (["--gpus", "16", "--nodes", "2:3", "--checkpoint", "s3://b/c"],
     "try --gpus 15 or 18 (multiples of 3), or --nodes 2:2, 2:4 or 2:8 (pod counts that divide 16)"),
    (["--gpus", "16", "--nodes", "3", "--checkpoint", "s3://b/c"], "or --nodes 1, 2 or 4 (pod counts that divide 16)"),
    (["--gpus", "16", "--nodes", "2:4", "--gpus-per-node", "8", "--checkpoint", "s3://b/c"],
     "(--gpus is the total at 4 pod(s): 4 x 8 = 32); try --gpus 32, or --nodes 2:2, or --gpus-per-node 4"),
    (["--gpus", "7", "--nodes", "2:4", "--checkpoint", "s3://b/c"], "try --gpus 4 or 8 (multiples of 4), or --nodes 2:7"),
])
def test_requests_that_cannot_be_met_are_refused_with_the_fix(argv, needle, capsys):
    code, _, err = run_main([EXAMPLE, *argv], capsys)
    assert code == 2 and needle in err, err


def test_verbs_without_a_cluster_say_how_to_configure_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, _, err = run_main(["status", "job-a"], capsys)
    assert code == 1 and "no cluster configured" in err and len(err.strip().splitlines()) == 1


def test_help_imports_neither_torch_nor_kubernetes():
    """What keeps `launch --help` light; how long it takes to start is a bench figure, not a test."""
    code = ("import sys; from launcher.cli import main; main(['--help']); "
            "print('IMPORTED', 'torch' in sys.modules, 'kubernetes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("IMPORTED False False")


def test_a_directory_bundle_honours_gitignore_and_round_trips(tmp_path):
    src = tmp_path / "proj"
    (src / "pkg").mkdir(parents=True)
    (src / "train.py").write_text("import pkg.model\n")
    (src / "pkg" / "model.py").write_text("X = 1\n")
    (src / "data.bin").write_bytes(b"x" * 100)
    (src / "pkg" / "__pycache__").mkdir()
    (src / "pkg" / "__pycache__" / "model.pyc").write_bytes(b"c")
    (src / ".gitignore").write_text("*.bin\n")
    b = make_bundle(str(src / "train.py"), code_dir=str(src))
    assert b.files == (".gitignore", "pkg/model.py", "train.py") and b.entrypoint == "train.py"
    assert make_bundle(str(src / "train.py"), code_dir=str(src)).sha256 == b.sha256  # deterministic
    (tmp_path / "b.tar.gz").write_bytes(b.data)
    out = unpack(str(tmp_path / "b.tar.gz"), b.sha256, str(tmp_path / "out"))
    assert open(os.path.join(out, "pkg", "model.py")).read() == "X = 1\n"


def test_a_changed_bundle_is_refused(tmp_path):
    b = make_bundle(EXAMPLE)
    (tmp_path / "b.tar.gz").write_bytes(b.data)
    with pytest.raises(UsageError, match="it changed since"):
        unpack(str(tmp_path / "b.tar.gz"), "0" * 64, str(tmp_path / "out"))


def test_a_missing_bundle_is_a_usage_error_and_an_outage_is_retried_later(tmp_path, monkeypatch, capsys):
    with pytest.raises(UsageError, match="does not exist"):
        unpack(str(tmp_path / "gone.tar.gz"), None, str(tmp_path / "out"))

    def outage(uri, dest):
        raise StorageError("download s3://b/code.tar.gz: 503 SlowDown, 5 tries")

    monkeypatch.setattr("trainer.codebundle._fetch", outage)
    (tmp_path / "train.py").write_text("")
    code = trainer_main(["run", "--checkpoint", str(tmp_path / "c"), "--code", "s3://b/code.tar.gz", "train.py"])
    assert code == ExitCode.INFRA  # a permanent exit 2 here failed a job for a passing blip
    assert capsys.readouterr().err.strip().endswith("503 SlowDown, 5 tries")


@pytest.mark.parametrize("member", ["../evil.py", "/etc/evil.py", "a/../../evil.py", "link"])
def test_unpacking_never_escapes_the_work_dir(tmp_path, member):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "b.tar.gz").write_bytes(raw.getvalue())
    with pytest.raises(UsageError, match="refusing to unpack"):
        unpack(str(tmp_path / "b.tar.gz"), None, str(tmp_path / "out"))
    assert not (tmp_path / "evil.py").exists()


def test_gpus_that_split_over_nodes_give_the_gpus_per_pod():
    from launcher.job.spec import split_over_nodes

    assert split_over_nodes(16, 2, 4, None) == 4  # --gpus is the total at MAX pods
    assert split_over_nodes(32, 2, 4, 8) == 8
    assert split_over_nodes(6, None, 3, None) == 2
