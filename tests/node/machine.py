"""A real Kubernetes node on this machine: containerd + runc, a CNI bridge, a kubelet, kube-proxy
and CoreDNS, joined to a control plane of its own (etcd, kube-apiserver, controller-manager,
scheduler, the training operator, Kubeflow Trainer v2 and JobSet), every binary built by
cluster/build.

Networking stays on this machine: the pods get a bridge (`BRIDGE`) on a private /24 whose
host address is the node's IP; the pods' only routes are that subnet and the Service range,
IP forwarding is left off and nothing is masqueraded, so no packet can leave. Whatever the
pods must reach on the host (the API server, CoreDNS, the S3 test server) listens on the
node's IP. The operator's Services are headless (CoreDNS answers with the pod IPs), and
kube-proxy serves the `kubernetes` Service that in-cluster clients (the CronJob's submitter)
use.

Two settings this machine needs, found by trying: runc cannot write oom_score_adj (the
capability bounding set lacks CAP_SYS_RESOURCE), so containerd restricts it
(`restrict_oom_score_adj`); AppArmor is not available (`disable_apparmor`).
"""

from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from launcher.k8s.preflight import INIT_CONTAINER_TEMPLATE as INIT_CONTAINER_TEMPLATE_PATH
from tests.helpers import REPO

BRIDGE = "kt0"
NODE_IP = "10.213.7.1"
POD_SUBNET = "10.213.7.0/24"
SERVICE_RANGE = "10.213.8.0/24"
KUBERNETES_SERVICE_IP = "10.213.8.1"  # the first address of SERVICE_RANGE
NODE_NAME = "kubetrain-node-0"
CLUSTER_DOMAIN = "cluster.local"
TOKEN = "kubetrain-node-tier-admin-token"
# Fake GPUs: extended resources advertised on the node's status, as the Kubernetes docs'
# "Advertise Extended Resources for a Node" does; pods that ask for them schedule and run
# their ranks on the CPU (nothing in the containers looks for a device).
FAKE_DEVICES = {"nvidia.com/gpu": "4", "nvidia.com/mig-1g.10gb": "2"}
GPU_PRODUCT = "kubetrain-fake-cpu"  # the node's nvidia.com/gpu.product label, for --gpu-type
STATE = Path("/run/kubetrain-node")  # containerd's state and socket, cleared at every start
PIDS = Path("/run/kubetrain-node.pids")  # the daemons started, so that a killed run's are ended at the next start
# The kubelet sets these (kernel defaults it wants for its own OOM and panic handling); they are
# this machine's settings, so they are put back when the node stops.
KUBELET_SYSCTLS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory")
CONTAINERD_SOCKET = STATE / "containerd.sock"
CACHE = Path(os.environ.get("KUBETRAIN_NODE_CACHE", os.path.expanduser("~/.cache/kubetrain/node")))
CNI_BIN = "/usr/lib/cni"  # Debian's containernetworking-plugins
INIT_CONTAINER_TEMPLATE = os.path.join(REPO, INIT_CONTAINER_TEMPLATE_PATH)  # the file launch's preflight names


def prerequisites_missing(bin_dir: str | None) -> list[str]:
    """What this machine lacks for the node tier, as install hints (empty when it has everything)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (containerd, the kubelet and the CNI bridge need it)")
    for tool, pkg in (("containerd", "containerd"), ("runc", "runc"), ("ctr", "containerd"),
                      ("iptables", "iptables"), ("ip", "iproute2"), ("openssl", "openssl")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {pkg})")
    for plugin in ("bridge", "host-local", "loopback"):
        if not os.path.exists(os.path.join(CNI_BIN, plugin)):
            missing.append(f"{CNI_BIN}/{plugin} (apt-get install containernetworking-plugins)")
    if not bin_dir:
        missing.append("Go, to build the kubelet, kube-proxy and CoreDNS (cluster/build)")
    else:
        for b in ("kubelet", "kube-proxy", "coredns", "jobset", "trainer-controller-manager"):
            if not os.path.exists(os.path.join(bin_dir, b)):
                missing.append(f"{b} in {bin_dir} (run cluster/build)")
    return missing


def _run(*cmd: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {out.returncode}: {out.stderr.strip()[-2000:]}")
    return out


def _openssl(*args: str) -> None:
    _run("openssl", *args)


def _ctr(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return _run("ctr", "--address", str(CONTAINERD_SOCKET), "--namespace", "k8s.io", *args, check=check,
                timeout=timeout)


def _free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode} while waiting for {what}")
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - not up yet
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def _kill_our_shims() -> None:
    """containerd's shims outlive containerd: end those of our socket (a crashed earlier run's too)."""
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            args = open(cmdline, "rb").read().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"containerd-shim-runc-v2") and str(CONTAINERD_SOCKET).encode() in args:
            try:
                os.kill(int(cmdline.split("/")[2]), signal.SIGKILL)
            except OSError:
                pass


def _unmount_under(root: Path) -> None:
    mounts = [line.split()[1] for line in open("/proc/self/mounts")]
    for m in sorted((m for m in mounts if m.startswith(str(root) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


def remove_bridge() -> None:
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def _kill_pod_processes() -> None:
    """SIGKILL every process in the kubelet's pod cgroups (cgroupfs driver): the containers'."""
    for procs in glob.glob("/sys/fs/cgroup/pids/kubepods/**/cgroup.procs", recursive=True):
        try:
            pids = open(procs).read().split()
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


def _kill_recorded_daemons() -> None:
    """End the daemons an earlier run recorded in PIDS and did not stop (pytest killed, say).

    Each line is "PID ARGV0": a PID is killed only while it still runs that program, since
    the PID of a daemon that ended may belong to another process by now.
    """
    try:
        lines = PIDS.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        pid, _, argv0 = line.partition(" ")
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode() == argv0:
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    PIDS.unlink(missing_ok=True)


def _read_sysctls() -> dict[str, str]:
    out = {}
    for name in KUBELET_SYSCTLS:
        try:
            out[name] = Path("/proc/sys", name).read_text().strip()
        except OSError:
            pass
    return out


def _write_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        try:
            Path("/proc/sys", name).write_text(value)
        except OSError:
            pass


@dataclass
class Node:
    """The node tier's cluster. `start()` brings everything up; `stop()` takes everything down."""

    bin_dir: str
    workdir: Path
    images: dict[str, str]  # image reference -> docker-save tarball
    pause_image: str
    init_image: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    trainer_v2: list[subprocess.Popen] = field(default_factory=list)  # JobSet, Trainer (tests/cluster/trainer_v2.py)
    kubeconfig: str = ""
    api_port: int = 0
    sysctls: dict[str, str] = field(default_factory=dict)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._clear_leftovers()
        self.sysctls = _read_sysctls()
        self._bridge()
        self._certs()
        self._control_plane()
        self._containerd()
        self._import_images()
        self._coredns()
        self._kube_proxy()
        self._kubelet()
        self._operator()
        self._trainer_v2()

    def stop(self) -> None:
        """Everything down, each step on its own: one that fails or hangs does not skip the rest."""
        steps = [self._stop_trainer_v2]
        steps += [lambda name=name: self._end(name) for name in ("training-operator", "kubelet", "kube-proxy", "coredns")]
        steps += [self._remove_containers, *(lambda name=name: self._end(name) for name in list(self.procs)),
                  lambda: self._end("containerd"), _kill_pod_processes, _kill_our_shims,
                  lambda: subprocess.run([os.path.join(self.bin_dir, "kube-proxy"), "--cleanup"],
                                         capture_output=True, timeout=60),
                  lambda: _unmount_under(self.workdir), lambda: _unmount_under(STATE), remove_bridge,
                  lambda: _write_sysctls(self.sysctls), lambda: PIDS.unlink(missing_ok=True)]
        for step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - the rest must still run
                print(f"node teardown: {e}")

    def _remove_containers(self) -> None:
        """The pods' containers, gone before containerd, so that nothing keeps running."""
        if "containerd" not in self.procs:
            return
        for task in _ctr("tasks", "ls", "-q", check=False, timeout=60).stdout.split():
            _ctr("tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=60)
        time.sleep(1)
        for c in _ctr("containers", "ls", "-q", check=False, timeout=60).stdout.split():
            _ctr("tasks", "delete", "-f", c, check=False, timeout=60)
            _ctr("containers", "delete", c, check=False, timeout=60)

    def _end(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is None:
            return
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def _start(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                             start_new_session=True)
        log.close()  # the child holds its own copy
        self.procs[name] = p
        with open(PIDS, "a") as f:
            f.write(f"{p.pid} {cmd[0]}\n")
        return p

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    # --- pieces ------------------------------------------------------------------------------
    def _clear_leftovers(self) -> None:
        """A run killed before its teardown leaves daemons, containers, mounts and the bridge: clear them."""
        _kill_recorded_daemons()
        _kill_pod_processes()
        _kill_our_shims()
        _unmount_under(STATE)
        shutil.rmtree(STATE, ignore_errors=True)
        remove_bridge()

    def _bridge(self) -> None:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")

    def _certs(self) -> None:
        d = self.workdir / "pki"
        d.mkdir(exist_ok=True)
        _openssl("genrsa", "-out", str(d / "ca.key"), "2048")
        _openssl("req", "-x509", "-new", "-key", str(d / "ca.key"), "-days", "30", "-subj", "/CN=kubetrain-node-ca",
                 "-out", str(d / "ca.crt"))
        _openssl("genrsa", "-out", str(d / "apiserver.key"), "2048")
        _openssl("req", "-new", "-key", str(d / "apiserver.key"), "-subj", "/CN=kube-apiserver",
                 "-out", str(d / "apiserver.csr"))
        sans = ",".join([f"IP:{NODE_IP}", f"IP:{KUBERNETES_SERVICE_IP}", "IP:127.0.0.1", "DNS:kubernetes",
                         "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                         f"DNS:kubernetes.default.svc.{CLUSTER_DOMAIN}"])
        (d / "ext.cnf").write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
        _openssl("x509", "-req", "-in", str(d / "apiserver.csr"), "-CA", str(d / "ca.crt"), "-CAkey",
                 str(d / "ca.key"), "-CAcreateserial", "-days", "30", "-extfile", str(d / "ext.cnf"),
                 "-out", str(d / "apiserver.crt"))
        _openssl("genrsa", "-out", str(d / "sa.key"), "2048")
        _openssl("rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub"))
        (d / "tokens.csv").write_text(f"{TOKEN},admin,admin,system:masters\n")

    def _control_plane(self) -> None:
        b, d, pki = self.bin_dir, self.workdir, self.workdir / "pki"
        etcd_port, etcd_peer = _free_port(), _free_port()
        self.api_port = _free_port(NODE_IP)
        self._start("etcd", [os.path.join(b, "etcd"), "--data-dir", str(d / "etcd"),
                             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                             "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}"])
        api = self._start("kube-apiserver", [
            os.path.join(b, "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={NODE_IP}", f"--advertise-address={NODE_IP}", f"--secure-port={self.api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC", f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            # The first issuer signs: this API server's own URL, where the Trainer's status server (a host
            # process) reads the OIDC discovery document that verifies the pods' projected tokens.
            f"--service-account-issuer=https://{NODE_IP}:{self.api_port}",
            "--service-account-issuer=https://kubernetes.default.svc", f"--service-cluster-ip-range={SERVICE_RANGE}",
            "--enable-priority-and-fairness=false", "--kubelet-preferred-address-types=InternalIP"])
        self.kubeconfig = str(d / "kubeconfig")
        ca = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
        Path(self.kubeconfig).write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "node",
            "clusters": [{"name": "node", "cluster": {"server": f"https://{NODE_IP}:{self.api_port}",
                                                      "certificate-authority-data": ca}}],
            "users": [{"name": "admin", "user": {"token": TOKEN}}],
            "contexts": [{"name": "node", "context": {"cluster": "node", "user": "admin"}}]}))
        _wait(lambda: self._get("/readyz") == "ok", 120, "kube-apiserver", [api])
        self._start("kube-controller-manager", [
            os.path.join(b, "kube-controller-manager"), f"--kubeconfig={self.kubeconfig}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={_free_port()}",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false", "--controllers=*"])
        self._start("kube-scheduler", [os.path.join(b, "kube-scheduler"), f"--kubeconfig={self.kubeconfig}",
                                       "--leader-elect=false", "--bind-address=127.0.0.1",
                                       f"--secure-port={_free_port()}"])

    def _get(self, path: str) -> str:
        import ssl
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        req = urllib.request.Request(f"https://{NODE_IP}:{self.api_port}{path}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=3, context=ctx) as r:
            return r.read().decode()

    def _containerd(self) -> None:
        STATE.mkdir(parents=True, exist_ok=True)
        cni_conf = self.workdir / "cni"
        cni_conf.mkdir(exist_ok=True)
        # No default route in the pods: only the bridge's subnet and the Service range (via the host).
        (cni_conf / "10-kubetrain.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "kubetrain",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": False,
                         "ipMasq": False, "hairpinMode": True,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                                  "routes": [{"dst": SERVICE_RANGE}],
                                  "dataDir": str(self.workdir / "ipam")}}]}))
        root = CACHE / "containerd"  # kept between runs: the imported images are the slow part
        config = self.workdir / "containerd.toml"
        config.write_text(f"""version = 2
root = "{root}"
state = "{STATE / 'state'}"
[grpc]
  address = "{CONTAINERD_SOCKET}"
[ttrpc]
  address = "{STATE / 'containerd.sock.ttrpc'}"
[debug]
  address = "{STATE / 'debug.sock'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.pause_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
""")
        p = self._start("containerd", ["containerd", "--config", str(config)])
        _wait(lambda: _ctr("version", check=False).returncode == 0, 60, "containerd", [p])
        # Records of an earlier run's pods (the metadata lives in the cached root).
        for c in _ctr("containers", "ls", "-q", check=False).stdout.split():
            _ctr("tasks", "delete", "-f", c, check=False)
            _ctr("containers", "delete", c, check=False)

    def _import_images(self) -> None:
        have = set(_ctr("images", "ls", "-q").stdout.split())
        for ref, tar in self.images.items():
            if _normalise(ref) not in have:
                _ctr("images", "import", tar, timeout=1200)
        # The cached root keeps every image ever imported: about 6 GB per change to trainer/ or
        # launcher/. Keep only this run's; --sync waits for containerd to drop their content.
        wanted = {_normalise(ref) for ref in self.images}
        stale = [r for r in have if r not in wanted and "/kubetrain/" in r]
        if stale:
            _ctr("images", "rm", "--sync", *stale, check=False, timeout=600)

    def _coredns(self) -> None:
        ready = _free_port()
        corefile = self.workdir / "Corefile"
        corefile.write_text(f""".:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig} node
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
}}
""")
        p = self._start("coredns", [os.path.join(self.bin_dir, "coredns"), "-conf", str(corefile)])
        _wait(lambda: _http_ok(f"http://127.0.0.1:{ready}/ready"), 60, "CoreDNS", [p])

    def _kube_proxy(self) -> None:
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": self.kubeconfig}, "hostnameOverride": NODE_NAME,
            "mode": "iptables", "clusterCIDR": POD_SUBNET, "bindAddress": NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{_free_port()}", "metricsBindAddress": f"127.0.0.1:{_free_port()}",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            # Zero: leave this machine's conntrack sysctls as they are.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False}}))
        self._start("kube-proxy", [os.path.join(self.bin_dir, "kube-proxy"), f"--config={config}"])

    def _kubelet(self) -> None:
        root = self.workdir / "kubelet"
        root.mkdir(exist_ok=True)
        config = self.workdir / "kubelet.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "port": _free_port(NODE_IP), "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": _free_port(),
            # The API server reads logs from it (`launch logs`); it listens only on the bridge.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs", "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "clusterDNS": [NODE_IP], "clusterDomain": CLUSTER_DOMAIN,
            # The images were imported, never pulled: the kubelet must not collect them.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "podLogsDirectory": str(self.workdir / "pod-logs"),  # not the machine's /var/log/pods
            "serializeImagePulls": False, "syncFrequency": "5s", "fileCheckFrequency": "5s",
            "nodeStatusUpdateFrequency": "5s",
        }))
        p = self._start("kubelet", [
            os.path.join(self.bin_dir, "kubelet"), f"--config={config}", f"--kubeconfig={self.kubeconfig}",
            f"--root-dir={root}", f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}",
            f"--node-labels=nvidia.com/gpu.product={GPU_PRODUCT}", "--v=2"])
        from kubernetes import client, config as kconfig

        core = client.CoreV1Api(kconfig.new_client_from_config(config_file=self.kubeconfig))

        def ready():
            n = core.read_node(NODE_NAME)
            return any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])

        _wait(ready, 180, f"node {NODE_NAME} Ready (log: {self.workdir}/kubelet.log)", [p])
        core.patch_node_status(NODE_NAME, {"status": {"capacity": FAKE_DEVICES}})
        _wait(lambda: all((core.read_node(NODE_NAME).status.allocatable or {}).get(k) == v
                          for k, v in FAKE_DEVICES.items()), 60, "the fake GPUs to be allocatable", [p])

    def _operator(self) -> None:
        from kubernetes import client, config as kconfig

        from tests.cluster.conftest import (OPERATOR_NAMESPACE, _serving_cert_dirs, install_crd, install_webhook,
                                            webhook_certs)

        api_client = kconfig.new_client_from_config(config_file=self.kubeconfig)
        install_crd(type("Api", (), {"ext": client.ApiextensionsV1Api(api_client)})())
        certs = webhook_certs(self.workdir / "webhook")
        webhook_port, probe_port = _free_port(), _free_port()
        install_webhook(client.CoreV1Api(api_client), client.AdmissionregistrationV1Api(api_client), certs,
                        webhook_port)
        p = self._start("training-operator", [
            os.path.join(self.bin_dir, "training-operator"), "--enable-scheme=pytorchjob", "--leader-elect=false",
            f"--metrics-bind-address=127.0.0.1:{_free_port()}", f"--health-probe-bind-address=127.0.0.1:{probe_port}",
            f"--webhook-server-port={webhook_port}",
            # Its own init container for workers, PSS-restricted, in an image this node has.
            f"--pytorch-init-container-template-file={INIT_CONTAINER_TEMPLATE}",
            f"--pytorch-init-container-image={self.init_image}"],
            env={"KUBECONFIG": self.kubeconfig, "MY_POD_NAMESPACE": OPERATOR_NAMESPACE,
                 "TMPDIR": str(_serving_cert_dirs(self.workdir, certs))})
        _wait(lambda: _http_ok(f"http://127.0.0.1:{probe_port}/readyz"), 120, "the training operator", [p])

    def _trainer_v2(self) -> None:
        """The JobSet controller and Trainer v2 with their webhooks and our ClusterTrainingRuntime, as in the
        cluster tier (tests/cluster/trainer_v2.py), so that TrainJobs run their pods on this node."""
        from kubernetes import config as kconfig

        from tests.cluster import trainer_v2
        from tests.cluster.conftest import webhook_certs

        api_client = kconfig.new_client_from_config(config_file=self.kubeconfig)
        d = self.workdir / "trainer-v2"
        # The TrainJobStatus gate on: node 0's pod calls the status server by its Service name, which
        # CoreDNS resolves to this host, with a projected token the server verifies against this API server.
        certs = webhook_certs(d / "webhook", trainer_v2.STATUS_DNS_NAME)
        self.trainer_v2 = trainer_v2.start(self.bin_dir, self.kubeconfig, d, certs, api_client, status_ip=NODE_IP)
        with open(PIDS, "a") as f:
            f.writelines(f"{p.pid} {p.args[0]}\n" for p in self.trainer_v2)

    def _stop_trainer_v2(self) -> None:
        if not self.trainer_v2:
            return
        from kubernetes import client, config as kconfig

        from tests.cluster import trainer_v2

        api_client = kconfig.new_client_from_config(config_file=self.kubeconfig)
        trainer_v2.stop(self.trainer_v2, client.AdmissionregistrationV1Api(api_client))
        self.trainer_v2 = []


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _normalise(ref: str) -> str:
    """containerd's name for an image reference: docker.io/library/x:tag style."""
    name, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
    if "/" not in name:
        name = f"library/{name}"
    if "." not in name.split("/")[0] and ":" not in name.split("/")[0] and name.split("/")[0] != "localhost":
        name = f"docker.io/{name}"
    return f"{name}:{tag}"
