"""Kueue on the cluster tier's control plane (and the node tier's), as a plain process.

`start(...)` installs Kueue's CRDs (k8s/crds/kueue.x-k8s.io_*.yaml, v0.17.0), its webhook
configurations for its own kinds and for the two integrations we enable, and runs the
controller manager built by cluster/build with a Configuration that manages exactly
`kubeflow.org/pytorchjob` and `trainer.kubeflow.org/trainjob`. Then it creates the
queueing objects a shared GPU cluster has: a ResourceFlavor for the fake GPU nodes, a
ClusterQueue with an `nvidia.com/gpu` quota (in a cohort, with a borrowing limit),
WorkloadPriorityClasses, and `local_queue(...)` makes a namespace's LocalQueue.

Out of cluster, its webhooks listen on 127.0.0.1 and are called by URL. Kueue v0.17 cannot
run with its internal certificate management off outside a pod: it then insists on a metrics
certificate at the fixed path /etc/kueue/metrics/certs. So it stays on, and is handed a pair
that also carries 127.0.0.1: its cert rotator (open-policy-agent/cert-controller) keeps a
valid CA and serving pair it finds in its Secret instead of making its own, checks only that
tls.crt is in its certDir (a Secret volume in a pod; written here), and injects the CA into
the webhook configurations and CRD conversion webhooks it knows by name — upstream's names,
so ours are those. The five CRDs upstream patches to webhook conversion (v1beta1 ↔ v1beta2)
get it here too, by URL; everything here, launch included, speaks v1beta2, the storage
version, so the API server never calls it. Kueue's visibility API server is off (its
VisibilityOnDemand gate): out of cluster it needs in-cluster credentials, and an APIService
needs a Service the out-of-cluster API server cannot route to; so queue positions are not
served here, and launch says nothing of them.
"""

from __future__ import annotations

import base64
import glob
import os
import subprocess
import time
from typing import Any

import yaml

from tests.cluster.trainer_v2 import free_port, install_crd_files, wait_ready
from tests.helpers import REPO

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_GLOB = os.path.join(REPO, "k8s", "crds", "kueue.x-k8s.io_*.yaml")
KUEUE_NAMESPACE = "kueue-system"
#: The integrations launch relies on (Kueue's Configuration `integrations.frameworks`).
PYTORCHJOB_FRAMEWORK, TRAINJOB_FRAMEWORK = "kubeflow.org/pytorchjob", "trainer.kubeflow.org/trainjob"
FRAMEWORKS = (PYTORCHJOB_FRAMEWORK, TRAINJOB_FRAMEWORK)

FLAVOR = "fake-gpu"
CLUSTER_QUEUE = "gpu-team-a"
COHORT = "gpus"
LOCAL_QUEUE = "team-a"
GPU = "nvidia.com/gpu"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # the label a job names its LocalQueue by
GPU_NOMINAL, GPU_BORROWING_LIMIT = 8, 4  # a job of more than 12 GPUs can never be admitted
CPU_NOMINAL = 16  # the real-runtime tests' pods ask for CPU only: this is their quota
#: WorkloadPriorityClasses: name -> value.
PRIORITIES = {"low": 100, "high": 1000}

_WEBHOOKS = {
    # As upstream's config/components/webhook/manifests.yaml, for Kueue's own kinds and our two integrations.
    "mutating": [
        ("mclusterqueue.kb.io", "/mutate-kueue-x-k8s-io-v1beta2-clusterqueue", GROUP, VERSION, ["clusterqueues"], ["CREATE"]),
        ("mresourceflavor.kb.io", "/mutate-kueue-x-k8s-io-v1beta2-resourceflavor", GROUP, VERSION, ["resourceflavors"],
         ["CREATE"]),
        ("mworkload.kb.io", "/mutate-kueue-x-k8s-io-v1beta2-workload", GROUP, VERSION, ["workloads"], ["CREATE"]),
        ("mpytorchjob.kb.io", "/mutate-kubeflow-org-v1-pytorchjob", "kubeflow.org", "v1", ["pytorchjobs"], ["CREATE"]),
        ("mtrainjob.kb.io", "/mutate-trainer-kubeflow-org-v1alpha1-trainjob", "trainer.kubeflow.org", "v1alpha1",
         ["trainjobs"], ["CREATE"]),
    ],
    "validating": [
        ("vclusterqueue.kb.io", "/validate-kueue-x-k8s-io-v1beta2-clusterqueue", GROUP, VERSION, ["clusterqueues"],
         ["CREATE", "UPDATE"]),
        ("vcohort.kb.io", "/validate-kueue-x-k8s-io-v1beta2-cohort", GROUP, VERSION, ["cohorts"], ["CREATE", "UPDATE"]),
        ("vresourceflavor.kb.io", "/validate-kueue-x-k8s-io-v1beta2-resourceflavor", GROUP, VERSION,
         ["resourceflavors"], ["CREATE", "UPDATE"]),
        ("vworkload.kb.io", "/validate-kueue-x-k8s-io-v1beta2-workload", GROUP, VERSION,
         ["workloads", "workloads/status"], ["CREATE", "UPDATE"]),
        ("vpytorchjob.kb.io", "/validate-kubeflow-org-v1-pytorchjob", "kubeflow.org", "v1", ["pytorchjobs"],
         ["CREATE", "UPDATE"]),
        ("vtrainjob.kb.io", "/validate-trainer-kubeflow-org-v1alpha1-trainjob", "trainer.kubeflow.org", "v1alpha1",
         ["trainjobs"], ["CREATE", "UPDATE"]),
    ],
}
#: Upstream's names, which Kueue's cert rotator injects its CA into (pkg/util/cert: "<base>-<type>-webhook-configuration").
WEBHOOK_CONFIGS = {"mutating": "kueue-mutating-webhook-configuration",
                   "validating": "kueue-validating-webhook-configuration"}
#: Kueue's defaults (apis/config/v1beta2/defaults.go): its Secret, and the Service name its serving cert is for.
WEBHOOK_SECRET = "kueue-webhook-server-cert"
WEBHOOK_DNS_NAME = f"kueue-webhook-service.{KUEUE_NAMESPACE}.svc"
CA_NAME = "kueue-ca"
#: The CRDs upstream serves through a conversion webhook (config/components/crd/patches/webhook_in_*).
CONVERTED_CRDS = tuple(f"{p}.{GROUP}" for p in ("localqueues", "clusterqueues", "workloads", "cohorts",
                                                 "multikueueclusters"))


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certs(d) -> dict[str, bytes]:
    """A CA named as Kueue's rotator names its own, and a serving pair for its Service name and 127.0.0.1 (PEM).

    The rotator keeps a pair only while it is valid for those names past its 90-day lookahead,
    and parses ca.key as PKCS#1.
    """
    os.makedirs(d, exist_ok=True)
    j = lambda name: os.path.join(d, name)  # noqa: E731
    _openssl("genrsa", "-traditional", "-out", j("ca.key"), "2048")
    _openssl("req", "-x509", "-new", "-key", j("ca.key"), "-days", "3650", "-subj", f"/O=kueue/CN={CA_NAME}",
             "-addext", f"subjectAltName=DNS:{CA_NAME}", "-out", j("ca.crt"))
    _openssl("genrsa", "-traditional", "-out", j("tls.key"), "2048")
    _openssl("req", "-new", "-key", j("tls.key"), "-subj", f"/CN={WEBHOOK_DNS_NAME}", "-out", j("tls.csr"))
    with open(j("ext.cnf"), "w") as f:
        f.write(f"subjectAltName=DNS:{WEBHOOK_DNS_NAME},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", j("tls.csr"), "-CA", j("ca.crt"), "-CAkey", j("ca.key"), "-CAcreateserial",
             "-days", "365", "-extfile", j("ext.cnf"), "-out", j("tls.crt"))
    return {name: open(j(name), "rb").read() for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")}


def install_crds(ext) -> None:
    """Create Kueue's CRDs (a 409 is fine) and wait until each is Established."""
    install_crd_files(ext, sorted(glob.glob(CRD_GLOB)))


def _webhooks(specs, port: int, ca: bytes) -> list[dict]:
    return [{"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
             "clientConfig": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": base64.b64encode(ca).decode()},
             "rules": [{"apiGroups": [group], "apiVersions": [version], "operations": ops, "resources": resources}]}
            for name, path, group, version, resources, ops in specs]


def install_webhooks(admission, ext, ca: bytes, port: int) -> None:
    """The webhook configurations, and the CRDs' conversion webhooks, at this start's port."""
    admission.create_mutating_webhook_configuration(
        {"metadata": {"name": WEBHOOK_CONFIGS["mutating"]}, "webhooks": _webhooks(_WEBHOOKS["mutating"], port, ca)})
    admission.create_validating_webhook_configuration(
        {"metadata": {"name": WEBHOOK_CONFIGS["validating"]},
         "webhooks": _webhooks(_WEBHOOKS["validating"], port, ca)})
    for name in CONVERTED_CRDS:
        ext.patch_custom_resource_definition(name, {"spec": {"conversion": {
            "strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1", "v1beta1"], "clientConfig": {
                "url": f"https://127.0.0.1:{port}/convert", "caBundle": base64.b64encode(ca).decode()}}}}})


def remove_webhooks(admission) -> None:
    """Before Kueue stops: a webhook with failurePolicy Fail and no server refuses every PyTorchJob and TrainJob."""
    from kubernetes.client.exceptions import ApiException

    for delete, name in ((admission.delete_mutating_webhook_configuration, WEBHOOK_CONFIGS["mutating"]),
                         (admission.delete_validating_webhook_configuration, WEBHOOK_CONFIGS["validating"])):
        try:
            delete(name)
        except ApiException as e:
            if e.status != 404:
                raise


def config(d, *, webhook_port: int, probe_port: int, cert_dir: str, frameworks=FRAMEWORKS) -> str:
    """Kueue v0.17.0's Configuration (config.kueue.x-k8s.io/v1beta2): our integrations, 127.0.0.1 only."""
    path = os.path.join(d, "kueue-config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
                        "namespace": KUEUE_NAMESPACE,
                        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": cert_dir},
                        "health": {"healthProbeBindAddress": f"127.0.0.1:{probe_port}"},
                        "metrics": {"bindAddress": "0"},  # "0": no metrics server
                        "leaderElection": {"leaderElect": False},
                        "internalCertManagement": {"enable": True},
                        "integrations": {"frameworks": list(frameworks)}}, f)
    return path


class Kueue:
    """The running controller manager; `restart(frameworks)` runs it again with other integrations."""

    def __init__(self, bin_dir: str, kubeconfig: str, d, api_client) -> None:
        from kubernetes import client

        self.bin_dir, self.kubeconfig, self.d = bin_dir, kubeconfig, str(d)
        self.admission = client.AdmissionregistrationV1Api(api_client)
        self.ext = client.ApiextensionsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        os.makedirs(self.d, exist_ok=True)
        pair = certs(os.path.join(self.d, "pki"))
        self.cert_dir = os.path.join(self.d, "certs")
        os.makedirs(self.cert_dir, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            with open(os.path.join(self.cert_dir, name), "wb") as f:
                f.write(pair[name])
        self.ca = pair["ca.crt"]
        self.proc: subprocess.Popen | None = None
        self.frameworks: tuple[str, ...] = ()
        self.starts = 0
        install_crds(self.ext)
        for create, args in ((self.core.create_namespace, ({"metadata": {"name": KUEUE_NAMESPACE}},)),
                             (self.core.create_namespaced_secret, (KUEUE_NAMESPACE, {
                                 "metadata": {"name": WEBHOOK_SECRET},
                                 "data": {k: base64.b64encode(v).decode() for k, v in pair.items()}}))):
            try:
                create(*args)
            except client.exceptions.ApiException as e:
                if e.status != 409:
                    raise

    @property
    def log(self) -> str:
        return os.path.join(self.d, f"kueue-{self.starts}.log")

    def start(self, frameworks=FRAMEWORKS) -> None:
        webhook_port, probe_port = free_port(), free_port()
        self.starts += 1
        self.frameworks = tuple(frameworks)
        install_webhooks(self.admission, self.ext, self.ca, webhook_port)
        cfg = config(self.d, webhook_port=webhook_port, probe_port=probe_port, cert_dir=self.cert_dir,
                     frameworks=frameworks)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [os.path.join(self.bin_dir, "kueue"), f"--config={cfg}",
                 # Its visibility API server wants in-cluster credentials for delegated authentication (and
                 # writes its own certificate to /visibility): out of cluster it would end the process.
                 "--feature-gates=VisibilityOnDemand=false"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": self.kubeconfig})
        wait_ready(probe_port, self.proc, f"kueue (log: {self.log})")

    def stop(self) -> None:
        try:
            remove_webhooks(self.admission)
        finally:
            if self.proc is not None:
                self.proc.terminate()
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                self.proc = None

    def restart(self, frameworks=FRAMEWORKS) -> None:
        self.stop()
        self.start(frameworks)

    def create(self, plural: str, body: dict[str, Any], namespace: str | None = None) -> None:
        """Create a Kueue object through its webhooks (retried while the webhook server's first handshake races)."""
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + 60
        while True:
            try:
                if namespace:
                    self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
                else:
                    self.custom.create_cluster_custom_object(GROUP, VERSION, plural, body)
                return
            except ApiException as e:
                if e.status == 409:
                    return
                if e.status < 500 or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def install_queues(self, flavor_labels: dict[str, str]) -> None:
        """The shared cluster's queueing objects: flavor, ClusterQueue (cohort, borrowing limit), priorities.

        flavor_labels: the flavor's nodeLabels, which Kueue adds to an admitted job's pods as a nodeSelector.
        """
        self.create("resourceflavors", {"apiVersion": API_VERSION, "kind": "ResourceFlavor",
                                        "metadata": {"name": FLAVOR}, "spec": {"nodeLabels": flavor_labels}})
        self.create("clusterqueues", cluster_queue())
        for name, value in PRIORITIES.items():
            self.create("workloadpriorityclasses", {"apiVersion": API_VERSION, "kind": "WorkloadPriorityClass",
                                                    "metadata": {"name": name}, "value": value,
                                                    "description": f"kubetrain tests: {name}"})

    def local_queue(self, namespace: str, name: str = LOCAL_QUEUE, cluster_queue_name: str = CLUSTER_QUEUE) -> str:
        self.create("localqueues", {"apiVersion": API_VERSION, "kind": "LocalQueue",
                                    "metadata": {"name": name, "namespace": namespace},
                                    "spec": {"clusterQueue": cluster_queue_name}}, namespace)
        return name


def cluster_queue(name: str = CLUSTER_QUEUE) -> dict[str, Any]:
    """A team's GPU quota: 8 GPUs of its own, up to 4 more borrowed from its cohort; lower priorities are preempted."""
    return {"apiVersion": API_VERSION, "kind": "ClusterQueue", "metadata": {"name": name},
            "spec": {"namespaceSelector": {}, "cohortName": COHORT, "queueingStrategy": "BestEffortFIFO",
                     "preemption": {"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Any"},
                     "resourceGroups": [{
                         "coveredResources": ["cpu", "memory", GPU],
                         "flavors": [{"name": FLAVOR, "resources": [
                             {"name": "cpu", "nominalQuota": str(CPU_NOMINAL)},
                             {"name": "memory", "nominalQuota": "256Gi"},
                             {"name": GPU, "nominalQuota": str(GPU_NOMINAL),
                              "borrowingLimit": str(GPU_BORROWING_LIMIT)}]}]}]}}


#: The cluster tier's fake GPU nodes (k8s/kwok/nodes.yaml) all carry this label.
KWOK_NODES = {"type": "kwok"}


def start(bin_dir: str, kubeconfig: str, d, api_client, flavor_labels: dict[str, str] = KWOK_NODES) -> Kueue:
    """CRDs, webhooks, Kueue (ready), the flavor, ClusterQueue and priority classes."""
    kueue = Kueue(bin_dir, kubeconfig, d, api_client)
    try:
        kueue.start()
        kueue.install_queues(flavor_labels)
    except BaseException:
        kueue.stop()
        raise
    return kueue


def workload_of(custom, namespace: str, job_uid: str) -> dict | None:
    """The Workload Kueue made for a job (label kueue.x-k8s.io/job-uid), or None while there is none."""
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads",
                                                 label_selector=f"kueue.x-k8s.io/job-uid={job_uid}")["items"]
    return items[0] if items else None


def condition(workload: dict | None, kind: str) -> dict | None:
    for c in ((workload or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return c
    return None


def gone_with_its_workloads(api, namespace: str, timeout: float = 180) -> None:
    """Delete a test's namespace and wait until it is gone: its jobs' Workloads release the ClusterQueue's quota
    only then, and a test after it would otherwise find the quota held (the deletion is asynchronous)."""
    from kubernetes.client.exceptions import ApiException

    api.core.delete_namespace(namespace)
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.core.read_namespace(namespace)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        if time.monotonic() > deadline:
            raise RuntimeError(f"namespace {namespace} not gone after {timeout:g}s: its jobs may hold Kueue quota")
        time.sleep(0.5)
