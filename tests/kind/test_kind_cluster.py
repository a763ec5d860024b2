"""kind for real, without a registry: the node image of images/kind-node, `kind create cluster --image` it.

A one-node cluster (kubeadm init on our Kubernetes build, the bridge CNI baked into the image, CoreDNS
and kube-proxy from images built here) comes up Ready; a pod on the bridge resolves the `kubernetes`
Service through CoreDNS and reaches it through kube-proxy; nothing on the kind network can reach
anything off this machine (the node has no default route, the host masquerades nothing, the kind
daemon turns no forwarding on); a pod of kubetrain's runtime image (images/build) runs; and
scripts/kind-e2e's job survives `launch chaos --kill-pod worker-0` on it and Succeeds.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tests.helpers import REPO
from tests.kind.conftest import NODE, skip_or_fail

pytestmark = [pytest.mark.kind, pytest.mark.timeout(3600)]  # the first build of the node image takes minutes

POD_SUBNET = ipaddress.ip_network("10.244.0.0/24")  # images/kind-node's bridge conflist
OUTSIDE = "198.51.100.1"  # TEST-NET-2: an address off this machine that no test ever reaches
COMPONENT_IMAGE = "registry.k8s.io/kube-proxy:v1.34.3"  # in the node image: the base, with bash and iproute2


def _pod(kind, name: str, image: str, script: str, timeout: float = 180) -> tuple[str, dict]:
    """Run a pod to its end; return its log and its status."""
    spec = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                                     "command": ["bash", "-c", script]}]}}
    p = subprocess.run([kind.env["KUBETRAIN_KUBECTL"], "--kubeconfig", kind.kubeconfig, "apply", "-f", "-"],
                       input=json.dumps(spec), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = json.loads(kind.kubectl("get", "pod", name, "-o", "json").stdout)["status"]
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(1)
    log = kind.kubectl("logs", name, check=False).stdout
    kind.kubectl("delete", "pod", name, "--wait=false", check=False)
    assert status.get("phase") in ("Succeeded", "Failed"), f"pod {name} did not end in {timeout}s: {status}"
    return log, status


def test_node_ready_on_the_local_image(kind_cluster):
    kind = kind_cluster
    assert kind.docker("inspect", "-f", "{{.Config.Image}}", NODE).stdout.strip() == kind.env["KUBETRAIN_KIND_NODE_IMAGE"]
    node = json.loads(kind.kubectl("get", "node", NODE, "-o", "json").stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True", node["status"]["conditions"]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.3"
    # CoreDNS (our build, kubeadm's Corefile) and kube-proxy run from the images baked into the node.
    kind.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s", timeout=150)
    kind.kubectl("-n", "kube-system", "rollout", "status", "daemonset/kube-proxy", "--timeout=120s", timeout=150)


def test_pod_on_the_bridge_resolves_and_reaches_services_and_nothing_outside(kind_cluster):
    log, status = _pod(kind_cluster, f"probe-{uuid.uuid4().hex[:6]}", COMPONENT_IMAGE, f"""
        getent hosts kubernetes.default.svc.cluster.local || exit 10
        timeout 5 bash -c 'echo > /dev/tcp/10.96.0.1/443' || exit 11
        if timeout 5 bash -c 'echo > /dev/tcp/{OUTSIDE}/80' 2>/tmp/err; then exit 12; fi
        cat /tmp/err""")
    assert status["phase"] == "Succeeded", (log, status)
    assert ipaddress.ip_address(status["podIP"]) in POD_SUBNET
    assert log.split()[0] == "10.96.0.1", log  # CoreDNS answered for the Service
    assert "Network is unreachable" in log, log  # refused at the node: no packet left it


def test_nothing_leaves_the_machine(kind_cluster):
    kind = kind_cluster
    # The node: no default route (images/kind-node's kubetrain-offline unit), so neither it nor a pod
    # behind it can send a packet off this machine, whatever the host's forwarding is.
    assert kind.node("ip", "-4", "route", "show", "default").stdout.strip() == ""
    assert kind.node("ip", "-6", "route", "show", "default").stdout.strip() == ""
    assert kind.node("ip", "route", "get", OUTSIDE, check=False).returncode != 0
    # The host masquerades nothing of the kind network, and the kind daemon turned no forwarding on.
    subnets = [c["Subnet"] for c in json.loads(kind.docker("network", "inspect", "kind").stdout)[0]["IPAM"]["Config"]]
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=True).stdout
    for line in nat.splitlines():
        assert not (("MASQUERADE" in line or "SNAT" in line) and any(s in line for s in subnets)), line
    pid = open("/run/kubetrain-kind-docker.pid").read().strip()
    cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    for flag in (b"--iptables=false", b"--ip-masq=false", b"--ip-forward=false"):
        assert flag in cmdline, cmdline


# The image's layer blobs, once unpacked: the snapshots are what containers start from.
DISCARD_LAYERS = r"""
d=$(ctr -n k8s.io images ls "name==$1" | awk 'NR == 2 {print $3}')
m=$(ctr -n k8s.io content get "$d" | jq -r 'if .manifests then .manifests[0].digest else "'"$d"'" end')
for l in $(ctr -n k8s.io content get "$m" | jq -r '.layers[].digest'); do ctr -n k8s.io content rm "$l" >/dev/null; done
"""


def _runtime_image() -> tuple[str, str]:
    """The runtime image and its `docker save` tarball: KUBETRAIN_IMAGE/KUBETRAIN_IMAGE_TAR, else images/build's."""
    if os.environ.get("KUBETRAIN_IMAGE_TAR"):
        return os.environ["KUBETRAIN_IMAGE"], os.environ["KUBETRAIN_IMAGE_TAR"]
    from tests.node.conftest import built_images

    env = built_images()
    return env["KUBETRAIN_IMAGE"], env["KUBETRAIN_IMAGE_TAR"]


@pytest.fixture(scope="module")
def runtime_image(kind_cluster) -> str:
    """The runtime image, imported into the node's containerd once for this module's tests."""
    kind = kind_cluster
    image, tar = _runtime_image()
    # The node's containerd holds the layers twice while it unpacks (content + snapshot), then drops
    # the content (as kind's discard_unpacked_layers does for pulls).
    need = 2 * os.path.getsize(tar) + (1 << 30)
    free = shutil.disk_usage(os.path.expanduser("~/.cache/kubetrain/kind")).free
    if free < need:
        skip_or_fail(f"importing {os.path.basename(tar)} into the kind node needs {need >> 30} GiB free, "
                     f"{free >> 30} GiB are")
    with open(tar, "rb") as f:
        p = subprocess.run(["docker", "exec", "-i", NODE, "ctr", "--namespace=k8s.io", "images", "import",
                            "--digests", "--snapshotter=overlayfs", "-"], stdin=f, capture_output=True, text=True,
                           timeout=1800, env={**os.environ, "DOCKER_HOST": kind.env["DOCKER_HOST"]})
    assert p.returncode == 0, p.stderr
    ref = image if image.count("/") > 1 else f"docker.io/{image}"
    kind.node("sh", "-euc", DISCARD_LAYERS, "discard", ref, timeout=300)
    return image


def test_runtime_image_pod_runs(kind_cluster, runtime_image):
    log, status = _pod(kind_cluster, f"runtime-{uuid.uuid4().hex[:6]}", runtime_image,
                       "python -c 'import torch, trainer, trainer.contract; print(\"ok\", torch.__version__)' && "
                       "python -m trainer --help >/dev/null && id -u", timeout=600)
    assert status["phase"] == "Succeeded", (log, status)
    assert log.split()[0] == "ok" and log.split()[-1] == "1000", log


def test_a_killed_worker_resumes_and_the_job_succeeds(kind_cluster, runtime_image):
    """scripts/kind-e2e on this cluster: the operator, a 2-pod job on a PV, `launch chaos --kill-pod worker-0`."""
    launch = os.path.join(os.path.dirname(sys.executable), "launch")
    env = {**os.environ, "KIND_E2E_CLUSTER_KUBECONFIG": kind_cluster.kubeconfig, "KUBETRAIN_IMAGE": runtime_image,
           "LAUNCH": launch}
    env.pop("KUBETRAIN_IMAGE_TAR", None)
    p = subprocess.run([os.path.join(REPO, "scripts", "kind-e2e")], capture_output=True, text=True, timeout=1500,
                       env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-5000:]
    assert "fault 1/1: deleted worker-0" in out, out[-5000:]
    resumed = re.search(r"resumed from step (\d+)", out)
    assert resumed and int(resumed.group(1)) > 0, out[-5000:]  # from a checkpoint, not from scratch
    assert "kind-e2e Succeeded after a killed worker-0" in out, out[-3000:]
