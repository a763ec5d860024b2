"""The kind tier's cluster: `kind create cluster` on the node image images/kind-node builds here, with no registry.

Needs root, Docker (docker.io: images/kind-dockerd starts a daemon of its own), mmdebstrap, jq, gcc and
Go (cluster/build --kind builds kind, kubeadm, kubectl and the images' binaries from the Go module
proxy). Where one is missing the tier is skipped with one line, unless it is required
(KUBETRAIN_REQUIRE_KIND_TIER=1, or KUBETRAIN_REQUIRE_NODE_TIER=1 where that one is unset: CI): then it fails. The teardown always runs to its end: `kind delete cluster`, then the kind daemon stops.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

from tests.helpers import REPO

CLUSTER = "kubetrain-e2e"  # k8s/kind/config-local.yaml's name
NODE = f"{CLUSTER}-control-plane"


def required() -> bool:
    """KUBETRAIN_REQUIRE_KIND_TIER=1 requires the tier, =0 does not; unset, it follows
    KUBETRAIN_REQUIRE_NODE_TIER (.ci/run sets that as root, where it installs every piece of both)."""
    own = os.environ.get("KUBETRAIN_REQUIRE_KIND_TIER")
    return own == "1" if own is not None else os.environ.get("KUBETRAIN_REQUIRE_NODE_TIER") == "1"


def skip_or_fail(reason: str):
    """Skip the kind tier for `reason`, or fail where it is required (required())."""
    if required():
        pytest.fail(f"kind tier: {reason}", pytrace=False)
    pytest.skip(f"kind tier: {reason}")


def prerequisites_missing() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (dockerd and mmdebstrap need it)")
    for tool, pkg in (("docker", "docker.io"), ("dockerd", "docker.io"), ("runc", "runc"), ("jq", "jq"),
                      ("mmdebstrap", "mmdebstrap"), ("gcc", "gcc libc6-dev"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {pkg})")
    if shutil.which("go") is None:
        missing.append("Go, to build kind, kubeadm and the node's binaries (cluster/build --kind)")
    return missing


@dataclass
class Kind:
    env: dict[str, str]  # images/kind-node --print-env
    kubeconfig: str

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return _run(["docker", *args], self.env, check=check, timeout=timeout)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return _run([self.env["KUBETRAIN_KUBECTL"], "--kubeconfig", self.kubeconfig, *args], self.env,
                    check=check, timeout=timeout)

    def node(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.docker("exec", NODE, *args, check=check, timeout=timeout)


def _run(cmd: list[str], env: dict[str, str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "DOCKER_HOST": env["DOCKER_HOST"]})
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {out.returncode}: {(out.stderr or out.stdout).strip()[-2000:]}")
    return out


def _kind(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return _run([env["KUBETRAIN_KIND"], *args], env, check=False, timeout=timeout)


def _stop_dockerd() -> None:
    subprocess.run([os.path.join(REPO, "images", "kind-dockerd"), "--stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="package")
def kind_cluster(tmp_path_factory):
    """A started one-node kind cluster (Kind); deleted after the last test of this package."""
    missing = prerequisites_missing()
    if missing:
        skip_or_fail("needs " + "; ".join(missing))
    out = subprocess.run([os.path.join(REPO, "images", "kind-node"), "--print-env"], capture_output=True,
                         text=True, timeout=3600)
    if out.returncode != 0:
        _stop_dockerd()  # it may have started it
        skip_or_fail(f"images/kind-node failed: {out.stderr.strip().splitlines()[-1:] or out.returncode}")
    env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    os.makedirs("/lib/modules", exist_ok=True)  # kind mounts it into every node
    kubeconfig = str(tmp_path_factory.mktemp("kind") / "kubeconfig")
    _kind(env, "delete", "cluster", "--name", CLUSTER)  # a crashed run's
    try:
        created = _kind(env, "create", "cluster", "--image", env["KUBETRAIN_KIND_NODE_IMAGE"], "--config",
                        env["KUBETRAIN_KIND_CONFIG"], "--kubeconfig", kubeconfig, "--wait", "180s", timeout=400)
        if created.returncode != 0:
            logs = _run(["docker", "exec", NODE, "journalctl", "--no-pager", "-n", "60", "-u", "kubelet"], env,
                        check=False).stdout
            raise RuntimeError(f"kind create cluster failed:\n{created.stderr[-3000:]}\n--- kubelet\n{logs}")
        yield Kind(env=env, kubeconfig=kubeconfig)
    finally:
        for step in (lambda: _kind(env, "delete", "cluster", "--name", CLUSTER, timeout=180),
                     _stop_dockerd):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - the rest must still run
                print(f"kind teardown: {e}")
