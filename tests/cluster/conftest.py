"""A real control plane on 127.0.0.1, every binary built by cluster/build.

`kubeconfig`: etcd and kube-apiserver, enough for the launcher's cluster I/O
(preflight, create-all-or-none, list, status, cancel) against the real API, its
admission and its validation. `operator_cluster` adds the controller-manager, the
scheduler, kwok's fake GPU nodes (k8s/kwok/) and the training operator with its
webhook, all as plain processes.

kwok runs directly rather than through `kwokctl create cluster --runtime binary`:
kwokctl would start its own etcd/apiserver/controller-manager/scheduler with its
own flags and ports, and fetch missing binaries from the internet; we need our
flags on them (toleration defaults, kubelet address type, webhook), one process
per component the tests can read the log of, and nothing downloaded at test time.
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

from tests.cluster import kueue as kueue_tier
from tests.cluster.pod_runner import RUN_FOR_REAL, PodRunner
from tests.helpers import REPO
from trainer import contract

TOKEN = "kubetrain-test-admin-token"
NODE_LOSS_TOLERATION_SECONDS = 2
KWOK_NODE_LEASE_SECONDS = 40  # kubelet's default
# kwok's chaos stages (k8s/kwok/stages.yaml) act on objects carrying these labels.
KWOK_POD_FAIL = "pod-container-running-failed.stage.kwok.x-k8s.io"  # exit code in annotation <this>/exit-code
KWOK_NODE_NOT_READY = "node-not-ready.stage.kwok.x-k8s.io"
# kwok serves the container logs of these pods (namespace, name) from <kwok_logs>/<name>.log
# (a ClusterLogs config), in the CRI log format: one a test writes, those of the pod runner.
LOGS_NAMESPACE, LOGS_POD = "kubetrain-logs", "held-master-0"
REAL_NAMESPACE = "kubetrain-real"
SERVED_LOGS = ((LOGS_NAMESPACE, LOGS_POD), *((REAL_NAMESPACE, f"{RUN_FOR_REAL}-{r}-0") for r in ("master", "worker")))
#: A TrainJob's pods have random names (<job>-node-0-<rank>-<suffix>): kwok serves one log file as the
#: `node` container's log of every pod in this namespace.
TRAINJOB_LOGS_NAMESPACE, TRAINJOB_LOGS_FILE = "kubetrain-v2-logs", "trainjob-node"


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


def pytest_collection_modifyitems(config, items):
    """The missing-CRD test first: any operator_cluster test installs the CRD for the session."""
    items.sort(key=lambda item: not item.name.startswith("test_0_"))  # stable: the rest keep their order


# Package-scoped, as are the fixtures below: the control plane ends with this package's last
# test, so it does not keep running (and taking CPU) beside the node tier and the ranks of
# the runtime tier.
@pytest.fixture(scope="package")
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
                            # The first issuer signs: one this machine can reach, so that a verifier of
                            # projected tokens (the Trainer's TrainJob status server, out of cluster) can
                            # read its OIDC discovery document; the in-cluster name is still accepted.
                            f"--service-account-issuer=https://127.0.0.1:{api_port}",
                            "--service-account-issuer=https://kubernetes.default.svc",
                            "--service-cluster-ip-range=10.96.0.0/16", "--enable-priority-and-fairness=false",
                            # Pods tolerate a not-ready/unreachable node this long (DefaultTolerationSeconds
                            # admission; 300 s by default), so node-loss tests evict in seconds.
                            f"--default-not-ready-toleration-seconds={NODE_LOSS_TOLERATION_SECONDS}",
                            f"--default-unreachable-toleration-seconds={NODE_LOSS_TOLERATION_SECONDS}",
                            # kwok's nodes are all 127.0.0.1 (their Hostname address resolves nowhere).
                            "--kubelet-preferred-address-types=InternalIP"],
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
    from launcher.k8s import api as client

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


# The training operator v1.8's webhook, run out of cluster. Its cert rotator
# (open-policy-agent/cert-controller, set up in the operator's pkg/cert) keeps a CA and a
# serving cert in this Secret and injects the CA into this ValidatingWebhookConfiguration;
# it only *updates* both, so they must exist before it starts. It keeps a valid pair (CA
# SAN = its CA name, serving SAN = <service>.<namespace>.svc, both valid past its 90-day
# lookahead) instead of generating its own, so ours, which also carries 127.0.0.1, stays.
OPERATOR_NAMESPACE = "kubeflow"  # MY_POD_NAMESPACE; the operator's default too
WEBHOOK_SECRET = "training-operator-webhook-cert"  # --webhook-secret-name's default
WEBHOOK_CONFIG = "validator.training-operator.kubeflow.org"
WEBHOOK_CA_NAME = "training-operator-ca"
WEBHOOK_DNS_NAME = f"training-operator.{OPERATOR_NAMESPACE}.svc"  # --webhook-service-name's default
# The rotator only checks that tls.crt exists in this fixed folder; the webhook server
# itself reads $TMPDIR/k8s-webhook-server/serving-certs, which the fixture points at its own.
ROTATOR_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def webhook_certs(d, *dns_names: str) -> dict[str, bytes]:
    """A CA and a serving cert for the operator's webhook: ca.crt, ca.key, tls.crt, tls.key (PEM).

    dns_names: more names the serving cert is for (the Trainer's status Service, where pods call it by name).
    """
    d.mkdir(parents=True, exist_ok=True)
    # PKCS#1 keys ("-traditional"): the rotator parses ca.key with x509.ParsePKCS1PrivateKey.
    _openssl("genrsa", "-traditional", "-out", str(d / "ca.key"), "2048")
    _openssl("req", "-x509", "-new", "-key", str(d / "ca.key"), "-days", "3650", "-subj", f"/CN={WEBHOOK_CA_NAME}",
             "-addext", f"subjectAltName=DNS:{WEBHOOK_CA_NAME}", "-out", str(d / "ca.crt"))
    _openssl("genrsa", "-traditional", "-out", str(d / "tls.key"), "2048")
    _openssl("req", "-new", "-key", str(d / "tls.key"), "-subj", f"/CN={WEBHOOK_DNS_NAME}", "-out", str(d / "tls.csr"))
    names = "".join(f",DNS:{n}" for n in dns_names)
    (d / "ext.cnf").write_text(f"subjectAltName=DNS:{WEBHOOK_DNS_NAME}{names},IP:127.0.0.1\n"
                               "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(d / "tls.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
             "-CAcreateserial", "-days", "365", "-extfile", str(d / "ext.cnf"), "-out", str(d / "tls.crt"))
    return {name: (d / name).read_bytes() for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")}


def install_webhook(core, admission, certs: dict[str, bytes], port: int) -> None:
    """The Secret the rotator keeps, and the PyTorchJob webhook called at 127.0.0.1 (the operator is out of cluster)."""
    import base64

    core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    core.create_namespaced_secret(OPERATOR_NAMESPACE, {
        "metadata": {"name": WEBHOOK_SECRET},
        "data": {k: base64.b64encode(v).decode() for k, v in certs.items()}})
    # As the operator's manifests/base/webhook, for the one scheme we enable.
    admission.create_validating_webhook_configuration({
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": [{
            "name": "validator.pytorchjob.training-operator.kubeflow.org",
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/validate-kubeflow-org-v1-pytorchjob",
                             "caBundle": base64.b64encode(certs["ca.crt"]).decode()},
            "rules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                       "resources": ["pytorchjobs"]}]}]})


def _serving_cert_dirs(d, certs: dict[str, bytes]):
    """Write the serving pair where the webhook server reads it; return the operator's TMPDIR."""
    tmp = d / "operator-tmp"
    folder = tmp / "k8s-webhook-server" / "serving-certs"  # controller-runtime's default CertDir
    folder.mkdir(parents=True)
    for name in ("tls.crt", "tls.key"):
        (folder / name).write_bytes(certs[name])
    # Shared by every operator on this machine and only tested for existence: any tls.crt will do.
    os.makedirs(ROTATOR_CERT_DIR, exist_ok=True)
    if not os.path.exists(os.path.join(ROTATOR_CERT_DIR, "tls.crt")):
        staged = os.path.join(ROTATOR_CERT_DIR, f".tls.crt.{os.getpid()}")
        with open(staged, "wb") as f:
            f.write(certs["tls.crt"])
        os.replace(staged, os.path.join(ROTATOR_CERT_DIR, "tls.crt"))
    return tmp


def _start(d, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    log = open(d / f"{name}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


@pytest.fixture(scope="package")
def kwok_logs(tmp_path_factory):
    """The folder of the log files kwok serves (SERVED_LOGS), each empty at first."""
    d = tmp_path_factory.mktemp("kwok-logs")
    for _, pod in SERVED_LOGS:
        (d / f"{pod}.log").touch()
    (d / f"{TRAINJOB_LOGS_FILE}.log").touch()
    return d


@pytest.fixture
def kwok_pod_log(kwok_logs):
    """The file kwok serves as the log of LOGS_NAMESPACE/LOGS_POD's container."""
    return kwok_logs / f"{LOGS_POD}.log"


def _kwok_logs_config(d, log_dir) -> str:
    path = d / "kwok-logs.yaml"
    path.write_text(yaml.safe_dump_all([{
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterLogs", "metadata": {"name": f"{ns}.{pod}"},
        "spec": {"selector": {"matchNamespaces": [ns], "matchNames": [pod]},
                 "logs": [{"containers": [contract.CONTAINER_NAME], "logsFile": str(log_dir / f"{pod}.log"),
                           "follow": True}]}} for ns, pod in SERVED_LOGS] + [{
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterLogs", "metadata": {"name": TRAINJOB_LOGS_NAMESPACE},
        "spec": {"selector": {"matchNamespaces": [TRAINJOB_LOGS_NAMESPACE]},
                 "logs": [{"containers": ["node"], "logsFile": str(log_dir / f"{TRAINJOB_LOGS_FILE}.log"),
                           "follow": True}]}}]))
    return str(path)


@pytest.fixture(scope="package")
def operator_cluster(kubeconfig, tmp_path_factory, kwok_logs):
    """On top of the API server: controller-manager, scheduler, kwok's fake GPU nodes, the training operator.

    Yields the kubeconfig. The PyTorchJob CRD is the operator's (installed first).
    """
    bin_dir = _cluster_bin()
    d = tmp_path_factory.mktemp("operator-cluster")
    sa_key = os.path.join(os.path.dirname(kubeconfig), "sa.key")
    certs = webhook_certs(d / "webhook")  # the webhook's, and kwok's "kubelet" serves TLS with them too
    kwok_port = _free_port()
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=kubeconfig)
    # Before the controller-manager: its REST mapper would learn the CRD only at its next 30 s
    # refresh, and its disruption controller could not size our PDBs until then.
    install_crd(type("Api", (), {"ext": client.ApiextensionsV1Api(api_client)})())
    procs = [
        _start(d, "controller-manager", [os.path.join(bin_dir, "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
                                         "--leader-elect=false", "--bind-address=127.0.0.1",
                                         f"--secure-port={_free_port()}", f"--service-account-private-key-file={sa_key}",
                                         "--use-service-account-credentials=false", "--controllers=*",
                                         # kwok renews every node's Lease; on a busy 2-core machine it can
                                         # lag past the 50 s default, and a node gone Unknown has its pods
                                         # evicted after NODE_LOSS_TOLERATION_SECONDS. The NotReady test
                                         # has kwok report Ready=False, which does not wait for this.
                                         "--node-monitor-grace-period=180s"]),
        _start(d, "scheduler", [os.path.join(bin_dir, "kube-scheduler"), f"--kubeconfig={kubeconfig}",
                                "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={_free_port()}"]),
    ]
    kwok_cmd = [os.path.join(bin_dir, "kwok"), f"--kubeconfig={kubeconfig}", "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--config={os.path.join(REPO, 'k8s', 'kwok', 'stages.yaml')}",
                f"--config={_kwok_logs_config(d, kwok_logs)}",
                # The API server reaches each node's "kubelet" (logs) at InternalIP:node-port.
                f"--node-port={kwok_port}", f"--tls-cert-file={d / 'webhook' / 'tls.crt'}",
                f"--tls-private-key-file={d / 'webhook' / 'tls.key'}",
                f"--server-address=127.0.0.1:{kwok_port}", "--node-ip=127.0.0.1",
                # Without a lease duration kwok keeps no node Leases, and its heartbeat stage renews a
                # node's status only every 600-1210 s: the node-lifecycle controller, which hears of no
                # node for longer than --node-monitor-grace-period, marked nodes Unknown every few minutes
                # and evicted real pods. With Leases (renewed every quarter of this) nodes stay Ready
                # until a test makes one NotReady (KWOK_NODE_NOT_READY) or taints it.
                f"--node-lease-duration-seconds={KWOK_NODE_LEASE_SECONDS}"]
    procs.append(_start(d, "kwok", kwok_cmd))
    try:
        core = client.CoreV1Api(api_client)
        for node in yaml.safe_load_all(open(os.path.join(REPO, "k8s", "kwok", "nodes.yaml"))):
            status = node.pop("status")
            created = core.create_node(node)
            core.patch_node_status(created.metadata.name, {"status": status})
        webhook_port, probe_port = _free_port(), _free_port()
        install_webhook(core, client.AdmissionregistrationV1Api(api_client), certs, webhook_port)
        # The webhook server binds every interface on --webhook-server-port: v1.8 has no flag for its host.
        operator = _start(d, "training-operator", [
            os.path.join(bin_dir, "training-operator"), "--enable-scheme=pytorchjob", "--leader-elect=false",
            f"--metrics-bind-address=127.0.0.1:{_free_port()}", f"--health-probe-bind-address=127.0.0.1:{probe_port}",
            f"--webhook-server-port={webhook_port}"],
            env={"KUBECONFIG": kubeconfig, "MY_POD_NAMESPACE": OPERATOR_NAMESPACE,
                 "TMPDIR": str(_serving_cert_dirs(d, certs))})
        procs.append(operator)
        # Ready once its certs are in place and its webhook serves (the operator's own readyz check).
        _wait_ready(f"http://127.0.0.1:{probe_port}/readyz", operator, f"training-operator (log: {d}/training-operator.log)")
        deadline = time.monotonic() + 60
        kwok_restarts = 0
        while time.monotonic() < deadline:
            kwok = next(p for p in procs if p.args == kwok_cmd)
            if kwok.poll() is not None and kwok_restarts < 2:
                # kwok v0.7.0 (and v0.8.0) builds each Stage's CEL environment lazily, unlocked, and
                # its node and pod workers doing that at once die with "fatal error: concurrent map
                # writes" (1 CI start in ~10 here). It keeps no state of its own: start it again.
                kwok_restarts += 1
                os.replace(d / "kwok.log", d / f"kwok-crashed-{kwok_restarts}.log")
                procs[procs.index(kwok)] = _start(d, "kwok", kwok_cmd)
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


@pytest.fixture
def pod_runner(operator_cluster, kwok_logs, tmp_path):
    """Runs the pods of jobs named RUN_FOR_REAL as local processes (tests/cluster/pod_runner.py)."""
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=operator_cluster))
    with PodRunner(core, tmp_path / "pod-runner", kwok_logs) as runner:
        yield runner


@pytest.fixture(scope="package")
def trainjob_cluster(operator_cluster, tmp_path_factory):
    """operator_cluster plus Kubeflow Trainer v2 and the JobSet controller with their webhooks.

    A fixture of its own, so that the PyTorchJob tests do not start them. Yields the
    kubeconfig, with the CRDs, the webhooks and our ClusterTrainingRuntime installed
    (tests/cluster/trainer_v2.py); the webhooks go again before the controllers stop
    (their failurePolicy is Fail).
    """
    from kubernetes import client, config

    from tests.cluster import trainer_v2

    d = tmp_path_factory.mktemp("trainer-v2")
    api_client = config.new_client_from_config(config_file=operator_cluster)
    procs = trainer_v2.start(_cluster_bin(), operator_cluster, d, webhook_certs(d / "webhook"), api_client)
    try:
        yield operator_cluster
    finally:
        trainer_v2.stop(procs, client.AdmissionregistrationV1Api(api_client))


@pytest.fixture(scope="package")
def kueue(trainjob_cluster, tmp_path_factory):
    """Kueue (tests/cluster/kueue.py) in front of the operator and Trainer v2: both integrations on.

    Yields the running `kueue.Kueue`: its flavor, ClusterQueue and WorkloadPriorityClasses are
    installed; `local_queue(ns)` makes a namespace's LocalQueue, `restart(frameworks)` runs it
    with other integrations. Its webhooks go before it stops (their failurePolicy is Fail).
    """
    from kubernetes import config

    d = tmp_path_factory.mktemp("kueue")
    api_client = config.new_client_from_config(config_file=trainjob_cluster)
    running = kueue_tier.start(_cluster_bin(), trainjob_cluster, d, api_client)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def kueue_cluster(kueue):
    """The kubeconfig of the cluster with Kueue in front (the `kueue` fixture), with both integrations on."""
    if kueue.frameworks != kueue_tier.FRAMEWORKS:  # a test before ran it with fewer integrations
        kueue.restart()
    return kueue.kubeconfig
