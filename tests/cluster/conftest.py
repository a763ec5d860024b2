"""A real control plane on 127.0.0.1: etcd and kube-apiserver built by cluster/build.

Enough for the launcher's cluster I/O (preflight, create-all-or-none, list,
status, cancel) against the real API, its admission and its validation. The
operator, scheduler and kwok nodes are the cluster-tier issue's next step.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest
import yaml

from tests.helpers import REPO

TOKEN = "kubetrain-test-admin-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_bin() -> str | None:
    """The binaries' folder; None only when Go is missing. A failed build is an error, not a skip."""
    if os.environ.get("KUBETRAIN_CLUSTER_BIN"):
        return os.environ["KUBETRAIN_CLUSTER_BIN"]
    if shutil.which("go") is None:
        return None
    out = subprocess.run([os.path.join(REPO, "cluster", "build")], capture_output=True, text=True, timeout=3000)
    if out.returncode != 0:
        raise RuntimeError(f"cluster/build failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def _wait_ready(url: str, proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    ctx = ssl._create_unverified_context()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout}s")


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory):
    """Start etcd + kube-apiserver; yield a kubeconfig path (the test's KUBECONFIG)."""
    bin_dir = _cluster_bin()
    if not bin_dir:
        pytest.skip("cluster tier: needs Go to build etcd and kube-apiserver (cluster/build), or "
                    "KUBETRAIN_CLUSTER_BIN pointing at them")
    d = tmp_path_factory.mktemp("cluster")
    subprocess.run(["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub")], check=True,
                   capture_output=True)
    (d / "tokens.csv").write_text(f"{TOKEN},admin,admin,system:masters\n")
    etcd_port, etcd_peer, api_port = _free_port(), _free_port(), _free_port()
    logs = {name: open(d / f"{name}.log", "w") for name in ("etcd", "apiserver")}
    etcd = subprocess.Popen([os.path.join(bin_dir, "etcd"), "--data-dir", str(d / "etcd"),
                             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                             "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}"],
                            stdout=logs["etcd"], stderr=subprocess.STDOUT)
    api = subprocess.Popen([os.path.join(bin_dir, "kube-apiserver"),
                            f"--etcd-servers=http://127.0.0.1:{etcd_port}", "--bind-address=127.0.0.1",
                            "--advertise-address=127.0.0.1", f"--secure-port={api_port}", f"--cert-dir={d / 'certs'}",
                            f"--token-auth-file={d / 'tokens.csv'}", "--authorization-mode=RBAC",
                            f"--service-account-key-file={d / 'sa.pub'}",
                            f"--service-account-signing-key-file={d / 'sa.key'}",
                            "--service-account-issuer=https://kubernetes.default.svc",
                            "--service-cluster-ip-range=10.96.0.0/16", "--enable-priority-and-fairness=false"],
                           stdout=logs["apiserver"], stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"https://127.0.0.1:{api_port}/readyz", api, "kube-apiserver")
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
                  "clusters": [{"name": "test", "cluster": {"server": f"https://127.0.0.1:{api_port}",
                                                            "insecure-skip-tls-verify": True}}],
                  "users": [{"name": "admin", "user": {"token": TOKEN}}],
                  "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}]}
        path = d / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        yield str(path)
    finally:
        for p in (api, etcd):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def kube(kubeconfig, monkeypatch):
    """The test's KUBECONFIG, and API clients on it."""
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    from launcher import client

    return client.connect()


def install_crd(api) -> None:
    from kubernetes.client.exceptions import ApiException

    crd = yaml.safe_load(open(os.path.join(REPO, "k8s", "crds", "kubeflow.org_pytorchjobs.yaml")))
    try:
        api.ext.create_custom_resource_definition(crd)
    except ApiException as e:
        if e.status != 409:
            raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = api.ext.read_custom_resource_definition("pytorchjobs.kubeflow.org")
        if any(c.type == "Established" and c.status == "True" for c in (got.status.conditions or [])):
            return
        time.sleep(0.2)
    raise RuntimeError("the PyTorchJob CRD did not become Established")


def _start(d, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    log = open(d / f"{name}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def operator_cluster(kubeconfig, tmp_path_factory):
    """On top of the API server: controller-manager, scheduler, kwok's fake GPU nodes, the training operator.

    Yields the kubeconfig. The PyTorchJob CRD is the operator's (installed first).
    """
    bin_dir = _cluster_bin()
    d = tmp_path_factory.mktemp("operator-cluster")
    sa_key = os.path.join(os.path.dirname(kubeconfig), "sa.key")
    procs = [
        _start(d, "controller-manager", [os.path.join(bin_dir, "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
                                         "--leader-elect=false", "--bind-address=127.0.0.1",
                                         f"--secure-port={_free_port()}", f"--service-account-private-key-file={sa_key}",
                                         "--use-service-account-credentials=false", "--controllers=*"]),
        _start(d, "scheduler", [os.path.join(bin_dir, "kube-scheduler"), f"--kubeconfig={kubeconfig}",
                                "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={_free_port()}"]),
        _start(d, "kwok", [os.path.join(bin_dir, "kwok"), f"--kubeconfig={kubeconfig}", "--manage-all-nodes=false",
                           "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                           f"--config={os.path.join(REPO, 'k8s', 'kwok', 'stages.yaml')}",
                           f"--server-address=127.0.0.1:{_free_port()}", "--node-ip=127.0.0.1"]),
    ]
    try:
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=kubeconfig)
        core = client.CoreV1Api(api_client)
        for node in yaml.safe_load_all(open(os.path.join(REPO, "k8s", "kwok", "nodes.yaml"))):
            status = node.pop("status")
            created = core.create_node(node)
            core.patch_node_status(created.metadata.name, {"status": status})
        install_crd(type("Api", (), {"ext": client.ApiextensionsV1Api(api_client)})())
        procs.append(_start(d, "training-operator", [
            os.path.join(bin_dir, "training-operator"), "--enable-scheme=pytorchjob", "--leader-elect=false",
            f"--metrics-bind-address=127.0.0.1:{_free_port()}", f"--health-probe-bind-address=127.0.0.1:{_free_port()}",
            "--monitoring-port=0"],
            env={"KUBECONFIG": kubeconfig}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            nodes = core.list_node().items
            if nodes and all(any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
                             for n in nodes):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"kwok nodes not Ready; see {d}/kwok.log")
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode}; logs in {d}")
        yield kubeconfig
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
