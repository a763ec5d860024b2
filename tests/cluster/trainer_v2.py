"""Kubeflow Trainer v2 and JobSet on the cluster tier's control plane, as plain processes.

`start(...)` installs the CRDs (k8s/crds/), the webhook configurations and our
ClusterTrainingRuntime (k8s/trainjob/), and runs the JobSet controller and the Trainer
controller manager built by cluster/build. Both run out of cluster, so certificate
management is off in their config files and their webhooks are called at 127.0.0.1 with
the cluster tier's own CA (the same CA and serving pair as the training operator's
webhook); upstream, each rotates its own certificates into a Secret and a Service.

`trainjob(...)` is a TrainJob on that runtime as `launch --backend trainjob` would
create one: the fields tests/cluster/test_trainjob_runtime.py shows working.

The TrainJobStatus feature gate is on where this machine allows a mount namespace (`unshare
--mount`): the status server the gate starts reads two fixed paths that an out-of-cluster
process does not have as upstream's pod does, its serving pair in
/tmp/k8s-webhook-server/serving-certs and a service account token in
/var/run/secrets/kubernetes.io/serviceaccount (only the token's issuer is read, to find the
API server's OIDC discovery document, which verifies the pods' projected tokens). Both are
bind-mounted for the controller alone. Its status URL names the Service upstream puts in
front of it; the pod runner calls it at 127.0.0.1 (tests/cluster/pod_runner.py).
"""

from __future__ import annotations

import base64
import copy
import os
import socket
import subprocess
import time
from typing import Any

import yaml

from tests.helpers import REPO

TRAINER_API = "trainer.kubeflow.org/v1alpha1"
JOBSET_API = "jobset.x-k8s.io/v1alpha2"
RUNTIME_PATH = os.path.join(REPO, "k8s", "trainjob", "clustertrainingruntime.yaml")
CRD_FILES = ("trainer.kubeflow.org_trainjobs.yaml", "trainer.kubeflow.org_trainingruntimes.yaml",
             "trainer.kubeflow.org_clustertrainingruntimes.yaml", "jobset.x-k8s.io_jobsets.yaml")
#: The replicated Job and container the Trainer's plugins fill (constants.Node upstream).
TRAINER_JOB = TRAINER_CONTAINER = "node"
#: Who owns a TrainJob's runtimePatches entry (spec.runtimePatches[].manager, a domain-prefixed path).
PATCH_MANAGER = "kubetrain.dev/launch"
#: Set by the JobSet controller on its Jobs and their pods.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
RESTART_ATTEMPT_LABEL = "jobset.sigs.k8s.io/restart-attempt"

# Webhook configurations as upstream's manifests (trainer manifests/base/webhook, jobset
# config/components/webhook with its pod objectSelector patches), by URL instead of Service.
_TRAINER_WEBHOOKS = {
    "mutating": [("defaulter.trainjob.trainer.kubeflow.org", "/mutate-trainer-kubeflow-org-v1alpha1-trainjob",
                  "trainer.kubeflow.org", "v1alpha1", "trainjobs", ["CREATE", "UPDATE"])],
    "validating": [
        ("validator.clustertrainingruntime.trainer.kubeflow.org",
         "/validate-trainer-kubeflow-org-v1alpha1-clustertrainingruntime",
         "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", ["CREATE", "UPDATE"]),
        ("validator.trainingruntime.trainer.kubeflow.org", "/validate-trainer-kubeflow-org-v1alpha1-trainingruntime",
         "trainer.kubeflow.org", "v1alpha1", "trainingruntimes", ["CREATE", "UPDATE"]),
        ("validator.trainjob.trainer.kubeflow.org", "/validate-trainer-kubeflow-org-v1alpha1-trainjob",
         "trainer.kubeflow.org", "v1alpha1", "trainjobs", ["CREATE", "UPDATE"])],
}
_JOBSET_WEBHOOKS = {
    "mutating": [("mjobset.kb.io", "/mutate-jobset-x-k8s-io-v1alpha2-jobset", "jobset.x-k8s.io", "v1alpha2",
                  "jobsets", ["CREATE"]),
                 ("mpod.kb.io", "/mutate--v1-pod", "", "v1", "pods", ["CREATE"])],
    "validating": [("vjobset.kb.io", "/validate-jobset-x-k8s-io-v1alpha2-jobset", "jobset.x-k8s.io", "v1alpha2",
                    "jobsets", ["CREATE", "UPDATE"]),
                   ("vpod.kb.io", "/validate--v1-pod", "", "v1", "pods", ["CREATE"])],
}
WEBHOOK_CONFIGS = {"trainer": "kubetrain-test-trainer", "jobset": "kubetrain-test-jobset"}
#: The TrainJobStatus plugin copies ca.crt of this Secret (certManagement.webhookSecretName's default) in
#: the operator's namespace (cert.GetOperatorNamespace()) into each TrainJob's <name>-tls-config ConfigMap.
OPERATOR_NAMESPACE, WEBHOOK_SECRET = "kubeflow-system", "kubeflow-trainer-webhook-cert"
STATUS_GATE = "TrainJobStatus"
#: The Service the status plugin names in each pod's KUBEFLOW_TRAINER_SERVER_URL (certManagement's
#: webhookServiceName default): https://<it>.<operator namespace>.svc:<statusServer.port>/...
STATUS_SERVICE = "kubeflow-trainer-controller-manager"
STATUS_DNS_NAME = f"{STATUS_SERVICE}.{OPERATOR_NAMESPACE}.svc"
#: Read by the status server, fixed in Trainer v2.3.0 (pkg/util/cert certDir, pkg/statusserver/auth.go).
FIXED_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"
FIXED_RUN_DIR = "/var/run"  # .../secrets/kubernetes.io/serviceaccount/{token,namespace} below it


def can_isolate() -> bool:
    """Whether this machine lets us give the controller its own mount namespace (root, or a user namespace)."""
    import shutil

    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True).returncode == 0


def _jwt_with_issuer(issuer: str, namespace: str) -> str:
    """An unsigned token whose claims name the issuer: the status server only decodes it to find the issuer."""
    def part(doc: dict) -> str:
        import json

        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none'})}.{part({'iss': issuer, 'kubernetes.io': {'namespace': namespace}})}.x"


def _isolated(cmd: list[str], d: str, cert_dir: str, kubeconfig: str) -> list[str]:
    """`cmd` in a mount namespace of its own, with the status server's fixed paths bound to ours."""
    server = yaml.safe_load(open(kubeconfig))["clusters"][0]["cluster"]["server"]
    sa = os.path.join(d, "run", "secrets", "kubernetes.io", "serviceaccount")
    os.makedirs(sa, exist_ok=True)
    with open(os.path.join(sa, "token"), "w") as f:
        f.write(_jwt_with_issuer(server, OPERATOR_NAMESPACE))  # the API server's first issuer (conftest)
    with open(os.path.join(sa, "namespace"), "w") as f:
        f.write(OPERATOR_NAMESPACE)
    os.makedirs(FIXED_CERT_DIR, exist_ok=True)  # shared with the training operator's fixture: only a mount point
    script = 'mount --bind "$1" "$2" && mount --bind "$3" "$4" && shift 4 && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            os.path.join(d, "run"), FIXED_RUN_DIR, cert_dir, FIXED_CERT_DIR, *cmd]


def install_status_secret(core, ca: bytes) -> None:
    from kubernetes.client.exceptions import ApiException

    for create, args in ((core.create_namespace, ({"metadata": {"name": OPERATOR_NAMESPACE}},)),
                         (core.create_namespaced_secret, (OPERATOR_NAMESPACE, {
                             "metadata": {"name": WEBHOOK_SECRET},
                             "data": {"ca.crt": base64.b64encode(ca).decode()}}))):
        try:
            create(*args)
        except ApiException as e:
            if e.status != 409:
                raise


def expose_status_server(core, discovery, ip: str, port: int) -> None:
    """STATUS_SERVICE as a headless Service with one endpoint, ip:port (the controller runs out of cluster)."""
    from kubernetes.client.exceptions import ApiException

    ports = [{"name": "status", "port": port, "protocol": "TCP"}]
    for create, args in (
            (core.create_namespaced_service, (OPERATOR_NAMESPACE, {
                "metadata": {"name": STATUS_SERVICE}, "spec": {"clusterIP": "None", "ports": ports}})),
            (discovery.create_namespaced_endpoint_slice, (OPERATOR_NAMESPACE, {
                "metadata": {"name": STATUS_SERVICE, "labels": {"kubernetes.io/service-name": STATUS_SERVICE}},
                "addressType": "IPv4", "ports": ports,
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]}))):
        try:
            create(*args)
        except ApiException as e:
            if e.status != 409:
                raise


def wait_tls(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} not listening after {timeout}s")


def load_runtime() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(open(RUNTIME_PATH)) if d]
    return doc


def trainjob(name: str, namespace: str, *, args: list[str], num_nodes: int = 1, image: str | None = None,
             env: dict[str, str] | None = None, resources_per_node: dict | None = None,
             num_proc_per_node: int | None = None, pod_labels: dict[str, str] | None = None,
             pod_annotations: dict[str, str] | None = None, pod_spec: dict[str, Any] | None = None,
             runtime: str = "kubetrain", runtime_kind: str = "ClusterTrainingRuntime") -> dict[str, Any]:
    """A TrainJob on our runtime: the trainer's args (script and its args), env, nodes and resources.

    Per-pod labels, annotations and pod_spec (a PodSpecPatch: tolerations, affinity,
    nodeSelector, volumes, containers[{name: node, volumeMounts, securityContext}],
    serviceAccountName, terminationGracePeriodSeconds, ...) go through a runtimePatches entry
    of ours: TrainJob v1alpha1 has no pod-template field of its own (the Trainer strategic-
    merges spec.runtimePatches[].trainingRuntimeSpec.template.spec into the runtime's JobSet
    spec, and copies the pod template's metadata onto the pods).
    """
    trainer: dict[str, Any] = {"numNodes": num_nodes, "args": list(args)}
    if image:
        trainer["image"] = image
    if env:
        trainer["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if resources_per_node:
        trainer["resourcesPerNode"] = resources_per_node
    if num_proc_per_node is not None:
        trainer["numProcPerNode"] = num_proc_per_node
    spec: dict[str, Any] = {"runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org", "kind": runtime_kind},
                            "trainer": trainer}
    meta = {k: v for k, v in (("labels", pod_labels), ("annotations", pod_annotations)) if v}
    pod = {k: v for k, v in (("metadata", meta), ("spec", pod_spec)) if v}
    if pod:
        spec["runtimePatches"] = [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": TRAINER_JOB, "template": {"spec": {"template": pod}}}]}}}}]
    return {"apiVersion": TRAINER_API, "kind": "TrainJob",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "kubetrain", "kubetrain.dev/job": name}},
            "spec": spec}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_crds(ext) -> None:
    """Create the Trainer's and JobSet's CRDs (a 409 is fine) and wait until each is Established."""
    install_crd_files(ext, [os.path.join(REPO, "k8s", "crds", f) for f in CRD_FILES])


def install_crd_files(ext, paths: list[str]) -> None:
    """Create the CRDs in these files (a 409 is fine) and wait until each is Established."""
    from kubernetes.client.exceptions import ApiException

    names = []
    for path in paths:
        crd = yaml.safe_load(open(path))
        names.append(crd["metadata"]["name"])
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as e:
            if e.status != 409:
                raise
    deadline = time.monotonic() + 60
    for name in names:
        while True:
            got = ext.read_custom_resource_definition(name)
            if any(c.type == "Established" and c.status == "True" for c in (got.status.conditions or [])):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} did not become Established")
            time.sleep(0.2)


def _webhooks(specs, port: int, ca: bytes, pods_of_jobsets: bool) -> list[dict]:
    out = []
    for name, path, group, version, resource, ops in specs:
        hook = {"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
                "clientConfig": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": base64.b64encode(ca).decode()},
                "rules": [{"apiGroups": [group], "apiVersions": [version], "operations": ops,
                           "resources": [resource]}]}
        if pods_of_jobsets and resource == "pods":
            # Upstream's patch: only a JobSet's pods, so that no other pod waits on this webhook.
            hook["objectSelector"] = {"matchExpressions": [{"key": JOBSET_NAME_LABEL, "operator": "Exists"}]}
        out.append(hook)
    return out


def install_webhooks(admission, ca: bytes, jobset_port: int, trainer_port: int) -> None:
    for key, specs, port in (("jobset", _JOBSET_WEBHOOKS, jobset_port), ("trainer", _TRAINER_WEBHOOKS, trainer_port)):
        name = WEBHOOK_CONFIGS[key]
        admission.create_mutating_webhook_configuration(
            {"metadata": {"name": name}, "webhooks": _webhooks(specs["mutating"], port, ca, True)})
        admission.create_validating_webhook_configuration(
            {"metadata": {"name": name}, "webhooks": _webhooks(specs["validating"], port, ca, True)})


def remove_webhooks(admission) -> None:
    """Before the controllers stop: a webhook with failurePolicy Fail and no server refuses every request."""
    from kubernetes.client.exceptions import ApiException

    for name in WEBHOOK_CONFIGS.values():
        for delete in (admission.delete_mutating_webhook_configuration,
                       admission.delete_validating_webhook_configuration):
            try:
                delete(name)
            except ApiException as e:
                if e.status != 404:
                    raise


def jobset_config(d, *, webhook_port: int, probe_port: int, cert_dir: str) -> str:
    """JobSet v0.12.0's Configuration (config.jobset.x-k8s.io/v1alpha1): no cert rotation, 127.0.0.1 only."""
    path = os.path.join(d, "jobset-config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
                        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": cert_dir},
                        "health": {"healthProbeBindAddress": f"127.0.0.1:{probe_port}"},
                        "metrics": {"bindAddress": "0"},  # "0": no metrics server
                        "leaderElection": {"leaderElect": False},
                        "internalCertManagement": {"enable": False}}, f)
    return path


def trainer_config(d, *, webhook_port: int, probe_port: int, status_port: int | None = None) -> str:
    """Trainer v2.3.0's Configuration (config.trainer.kubeflow.org/v1alpha1).

    Its webhook reads controller-runtime's default folder, $TMPDIR/k8s-webhook-server/serving-certs:
    the config has no certDir. status_port: the TrainJobStatus gate on, its server on that port
    (every address: the config has no host for it).
    """
    path = os.path.join(d, "trainer-config.yaml")
    config = {"apiVersion": "config.trainer.kubeflow.org/v1alpha1", "kind": "Configuration",
              "webhook": {"port": webhook_port, "host": "127.0.0.1"},
              "health": {"healthProbeBindAddress": f"127.0.0.1:{probe_port}"},
              "metrics": {"bindAddress": "0", "secureServing": False},
              "leaderElection": {"leaderElect": False},
              "certManagement": {"enable": False}}
    if status_port is not None:
        config.update(featureGates={STATUS_GATE: True}, statusServer={"port": status_port})
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def wait_ready(port: int, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout}s")


def start(bin_dir: str, kubeconfig: str, d, certs: dict[str, bytes], api_client, *,
          status_ip: str | None = None) -> list[subprocess.Popen]:
    """CRDs, webhooks, both controllers (ready), our ClusterTrainingRuntime; returns the processes.

    d: a folder for configs, certs and the logs (jobset.log, trainer.log).
    certs: ca.crt, tls.crt, tls.key (PEM) for 127.0.0.1.
    The TrainJobStatus gate is on where can_isolate(): its token check needs the API server's first
    --service-account-issuer to be its own https URL, as both tiers' kube-apiservers have it.
    status_ip: where pods reach this machine (the node tier's node IP): STATUS_SERVICE is made a headless
    Service whose one endpoint is the status server there, so that the pods' cluster DNS resolves the
    URL the plugin gives them (certs must then be for STATUS_DNS_NAME too). Without it the pod runner
    calls 127.0.0.1.
    """
    from kubernetes import client

    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, "trainer-tmp")
    cert_dir = os.path.join(tmp, "k8s-webhook-server", "serving-certs")
    os.makedirs(cert_dir, exist_ok=True)
    for name in ("tls.crt", "tls.key"):
        with open(os.path.join(cert_dir, name), "wb") as f:
            f.write(certs[name])
    install_crds(client.ApiextensionsV1Api(api_client))
    admission = client.AdmissionregistrationV1Api(api_client)
    ports = {k: free_port() for k in ("jobset_webhook", "jobset_probe", "trainer_webhook", "trainer_probe",
                                      "trainer_status")}
    status = can_isolate()
    if status:
        install_status_secret(client.CoreV1Api(api_client), certs["ca.crt"])
        if status_ip is not None:
            expose_status_server(client.CoreV1Api(api_client), client.DiscoveryV1Api(api_client), status_ip,
                                 ports["trainer_status"])
    install_webhooks(admission, certs["ca.crt"], ports["jobset_webhook"], ports["trainer_webhook"])
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    procs = []

    def run(name: str, cmd: list[str], extra_env: dict | None = None) -> subprocess.Popen:
        log = open(os.path.join(d, f"{name}.log"), "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**env, **(extra_env or {})})
        procs.append(p)
        return p

    try:
        jobset = run("jobset", [os.path.join(bin_dir, "jobset"), f"--kubeconfig={kubeconfig}",
                                f"--config={jobset_config(d, webhook_port=ports['jobset_webhook'], probe_port=ports['jobset_probe'], cert_dir=cert_dir)}"])
        config = trainer_config(d, webhook_port=ports["trainer_webhook"], probe_port=ports["trainer_probe"],
                                status_port=ports["trainer_status"] if status else None)
        cmd = [os.path.join(bin_dir, "trainer-controller-manager"), f"--kubeconfig={kubeconfig}", f"--config={config}"]
        trainer = run("trainer", _isolated(cmd, d, cert_dir, kubeconfig) if status else cmd, {"TMPDIR": tmp})
        # Ready: webhook servers listening (both managers' readyz checks are the webhook's).
        wait_ready(ports["jobset_probe"], jobset, f"jobset controller (log: {d}/jobset.log)")
        wait_ready(ports["trainer_probe"], trainer, f"trainer controller manager (log: {d}/trainer.log)")
        if status:  # after its OIDC discovery: a failed one stops the whole manager
            wait_tls(ports["trainer_status"], trainer, f"trainer status server (log: {d}/trainer.log)")
        install_runtime(client.CustomObjectsApi(api_client))
    except BaseException:
        stop(procs, admission)
        raise
    return procs


def install_runtime(custom, runtime: dict | None = None) -> None:
    """Create our ClusterTrainingRuntime through the Trainer's validating webhook (retried while it starts)."""
    from kubernetes.client.exceptions import ApiException

    body = copy.deepcopy(runtime or load_runtime())
    deadline = time.monotonic() + 60
    while True:
        try:
            custom.create_cluster_custom_object("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", body)
            return
        except ApiException as e:
            if e.status == 409:
                return
            # 500: "failed calling webhook" while the server's first TLS handshake races its start.
            if e.status < 500 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def stop(procs: list[subprocess.Popen], admission) -> None:
    try:
        remove_webhooks(admission)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
