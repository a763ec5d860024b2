"""The runtime image of images/build, as a container runtime runs it: no kubelet, just Docker.

A container runs as uid 1000 with every capability dropped and no-new-privileges, the
example mounted read-only and the checkpoints on a volume owned by 1000; `docker stop`
(SIGTERM to the supervisor as PID 1, then the grace period) must end it with 143 after a
committed checkpoint, and a new container must resume after that step and end with the
weights of an uninterrupted run on the host, bit for bit.

Needs root and Docker (`apt-get install docker.io mmdebstrap gcc`, run as root): images/build
starts kubetrain's own dockerd (images/dockerd) and builds the image once; later runs reuse it.
Without them the test is skipped, unless KUBETRAIN_REQUIRE_NODE_TIER=1 (CI): then it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest

from tests.helpers import EXAMPLE, REPO, read_json, run, wait_for
from tests.node.conftest import skip_or_fail

pytestmark = [pytest.mark.node, pytest.mark.timeout(3600)]  # the first build of the image takes minutes

STEPS = 200
TRAIN_ARGS = ["--steps", str(STEPS), "--samples", "2048", "--hidden", "64"]


@pytest.fixture(scope="module")
def image() -> dict[str, str]:
    """images/build's KEY=VALUE lines; the process environment gets its DOCKER_HOST."""
    if os.geteuid() != 0:
        skip_or_fail("needs root (dockerd does): run as root with `apt-get install docker.io mmdebstrap gcc`")
    missing = [tool for tool in ("dockerd", "docker", "containerd", "mmdebstrap", "gcc") if not shutil.which(tool)]
    if missing:
        skip_or_fail(f"needs {', '.join(missing)}: apt-get install docker.io containerd mmdebstrap gcc")
    out = subprocess.run([os.path.join(REPO, "images", "build"), "--print-env", "--no-save"], capture_output=True,
                         text=True, timeout=3600)
    assert out.returncode == 0, f"images/build failed:\n{out.stderr[-4000:]}"
    env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    os.environ["DOCKER_HOST"] = env["DOCKER_HOST"]
    return env


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"docker {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


@pytest.fixture
def containers():
    """Names for containers, each removed at the end of the test."""
    names = []

    def new() -> str:
        names.append(f"kubetrain-test-{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield new
    for name in names:
        docker("rm", "-f", name, check=False)


def restricted(name: str, image: str, ckpt: str, *, detach: bool = False) -> list[str]:
    """`docker run` as a locked-down pod runs it: uid 1000, no capabilities, code read-only."""
    # No network but loopback; the hostname resolves as the kubelet's /etc/hosts makes a pod's
    # (c10d looks it up, and waits for ever where it cannot).
    return ["run", *(["-d"] if detach else []), "--name", name, "--user", "1000:1000", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--shm-size", "256m", "--network", "none",
            "--hostname", "trainer", "--add-host", "trainer:127.0.0.1",
            "-v", f"{os.path.dirname(EXAMPLE)}:/code:ro", "-v", f"{ckpt}:/checkpoints", image]


def trainer_args(*script_args: str) -> list[str]:
    return ["run", "--nproc-per-node", "2", "--checkpoint", "/checkpoints", "--run-id", "exp",
            "--checkpoint-every-steps", "20", "/code/train.py", *TRAIN_ARGS,
            "--result", "/checkpoints/result.json", *script_args]


def test_the_image_runs_as_uid_1000_with_a_writable_home(image, containers):
    out = docker("run", "--rm", "--name", containers(), "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                 "--network", "none", "--entrypoint", "sh", image["KUBETRAIN_IMAGE"], "-c",
                 'id -u; id -g; echo "$HOME"; touch "$HOME/probe" && echo writable; '
                 'python -c "import torch, trainer; print(torch.__version__)"').stdout.split()
    import torch

    assert out == ["1000", "1000", "/home/kubetrain", "writable", torch.__version__]


def test_docker_stop_commits_exits_143_and_a_new_container_resumes_bit_identical(image, containers, tmp_path,
                                                                                 rng):
    baseline = tmp_path / "baseline"
    r = run(["--nproc-per-node", "2", "--checkpoint", str(baseline / "ckpt"), "--run-id", "exp",
             "--checkpoint-every-steps", "20", EXAMPLE, *TRAIN_ARGS, "--result", str(baseline / "result.json")])
    assert r.returncode == 0, r.stdout + r.stderr
    uninterrupted = read_json(str(baseline / "result.json"))

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    os.chown(ckpt, 1000, 1000)  # a volume owned by the container's user, as fsGroup makes a PVC
    first = containers()
    docker(*restricted(first, image["KUBETRAIN_IMAGE"], str(ckpt), detach=True), *trainer_args("--step-sleep", "0.03"))
    latest = ckpt / "exp" / "latest"

    def running() -> bool:
        return docker("inspect", "-f", "{{.State.Running}}", first).stdout.strip() == "true"

    wait_for(lambda: latest.exists() or not running(), 180, "the first checkpoint")
    if not latest.exists():
        logs = docker("logs", first)
        pytest.fail(f"no checkpoint before the container ended:\n{logs.stdout}{logs.stderr}")
    time.sleep(rng.uniform(0, 1.5))
    t = time.monotonic()
    docker("stop", "-t", "30", first, timeout=60)
    stop_seconds = time.monotonic() - t
    logs = docker("logs", first)
    log = logs.stdout + logs.stderr
    assert docker("inspect", "-f", "{{.State.ExitCode}}", first).stdout.strip() == "143", log
    assert stop_seconds < 25, f"docker stop took {stop_seconds:.1f}s: SIGKILL at the end of the grace period?\n{log}"
    stopped_at = int(latest.read_text())
    assert 0 < stopped_at < STEPS, log
    assert f"checkpoint step {stopped_at} committed" in log
    assert os.stat(ckpt / "exp" / "latest").st_uid == 1000
    print(f"docker stop: checkpoint step {stopped_at} committed, exit 143 after {stop_seconds:.1f}s")

    second = containers()
    r = docker(*restricted(second, image["KUBETRAIN_IMAGE"], str(ckpt)), *trainer_args(), timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    resumed = read_json(str(ckpt / "result.json"))
    assert resumed["resumed_from"] == stopped_at
    assert resumed["sha256"] == uninterrupted["sha256"]
