"""The node tier's fixtures: the real node (tests/node/machine.py) and the S3 test server the pods reach.

Every test here needs root, containerd, runc, the CNI plugins, the binaries of cluster/build
and the images of images/build. Where one is missing the tier is skipped with what to install,
unless KUBETRAIN_REQUIRE_NODE_TIER=1 (set by .ci/run, which installs all of them): then it fails.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests.helpers import REPO
from tests.node import machine


def skip_or_fail(reason: str):
    """Skip the node tier for `reason`, or fail where it is required (KUBETRAIN_REQUIRE_NODE_TIER=1, CI)."""
    if os.environ.get("KUBETRAIN_REQUIRE_NODE_TIER") == "1":
        pytest.fail(f"node tier: {reason}", pytrace=False)
    pytest.skip(f"node tier: {reason}")


def _cluster_bin() -> str | None:
    from tests.cluster.conftest import _cluster_bin as build

    return build()


def built_images() -> dict[str, str]:
    """images/build's KEY=VALUE lines (it builds once and caches): the runtime and pause images and their tarballs."""
    out = subprocess.run([os.path.join(REPO, "images", "build"), "--print-env"], capture_output=True, text=True,
                         timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"images/build failed:\n{out.stderr[-3000:]}")
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


@pytest.fixture(scope="package")
def node(tmp_path_factory):
    """A started machine.Node; taken down after the last test of this package."""
    bin_dir = _cluster_bin()
    missing = machine.prerequisites_missing(bin_dir)
    if missing:
        skip_or_fail("needs " + "; ".join(missing))
    env = built_images()
    image, pause = env["KUBETRAIN_IMAGE"], env["KUBETRAIN_PAUSE_IMAGE"]
    n = machine.Node(bin_dir=bin_dir, workdir=tmp_path_factory.mktemp("node"),
                     images={image: env["KUBETRAIN_IMAGE_TAR"], pause: env["KUBETRAIN_PAUSE_TAR"]},
                     pause_image=pause, init_image=image)
    try:
        n.start()
    except Exception as e:
        logs = "\n".join(f"--- {name}\n{n.log(name, 1500)}" for name in
                         ("kube-apiserver", "containerd", "kubelet", "kube-proxy", "coredns", "training-operator"))
        n.stop()  # each step on its own; it does not raise
        raise RuntimeError(f"the node tier did not start ({e}); logs in {n.workdir}\n{logs}") from None
    n.image = image
    yield n
    n.stop()


@pytest.fixture
def api(node, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", node.kubeconfig)
    from launcher.k8s import api as client

    return client.connect()


@pytest.fixture
def restricted_namespace(api):
    """A fresh namespace that enforces Pod Security `restricted`, as locked-down clusters do."""
    name = f"n-{uuid.uuid4().hex[:8]}"
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
    api.core.create_namespace({"metadata": {"name": name, "labels": labels}})
    yield name
    api.core.delete_namespace(name, grace_period_seconds=0)


@pytest.fixture(scope="package")
def node_s3(node, tmp_path_factory):
    """moto's S3 server on the node's IP, where the pods (and this process) reach it; yields its URL."""
    from testsupport.local_s3 import moto_server

    with moto_server(host=machine.NODE_IP, log_path=str(tmp_path_factory.mktemp("node-s3") / "moto.log")) as url:
        yield url


@pytest.fixture(scope="package")
def node_kueue(node, tmp_path_factory):
    """Kueue (tests/cluster/kueue.py) on the node's control plane, in front of the operator and Trainer v2.

    Its flavor has no node labels (the one real node carries none of the fake GPU nodes'). Started by
    the first test that asks for it; its webhooks go before it stops. Its pid is recorded with the
    node's daemons, so that a crashed run's leftover is ended by the next start.
    """
    from kubernetes import config as kconfig

    from tests.cluster import kueue as kueue_tier

    d = tmp_path_factory.mktemp("node-kueue")
    api_client = kconfig.new_client_from_config(config_file=node.kubeconfig)
    running = kueue_tier.start(node.bin_dir, node.kubeconfig, d, api_client, flavor_labels={})
    with open(machine.PIDS, "a") as f:
        f.write(f"{running.proc.pid} {running.proc.args[0]}\n")
    try:
        yield running
    finally:
        running.stop()
