"""The cluster-side YAML in k8s/ validates against the Kubernetes OpenAPI schemas, offline."""

import glob
import os

import kubernetes_validate
import pytest
import yaml

from tests import crds
from tests.helpers import REPO

FILES = sorted(f for f in glob.glob(os.path.join(REPO, "k8s", "**", "*.yaml"), recursive=True)
               if "/crds/" not in f and "/chart/" not in f  # the Helm chart: tests/*/test_schedule_chart*.py
               and "/kind/" not in f)  # kind's own Cluster config: tests/unit/test_kind_files.py


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(f, REPO) for f in FILES])
def test_k8s_manifest_validates(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("kwok.x-k8s.io/"):
            assert doc["kind"] == "Stage" and doc["spec"]["resourceRef"]["kind"] in ("Pod", "Node", "Lease")
            continue  # kwok's own kinds: the cluster tier loads them into kwok
        if doc["apiVersion"].split("/")[0] in {crd["spec"]["group"] for crd in crds.crds().values()}:
            crds.validate(doc)  # a custom resource (k8s/trainjob/): its vendored CRD
            continue
        kubernetes_validate.validate(doc, "1.31.0", strict=True)


def test_the_vendored_crd_is_the_pytorchjob_v1_crd():
    crd = yaml.safe_load(open(os.path.join(REPO, "k8s", "crds", "kubeflow.org_pytorchjobs.yaml")))
    assert crd["metadata"]["name"] == "pytorchjobs.kubeflow.org"
    assert [v["name"] for v in crd["spec"]["versions"]] == ["v1"]


def test_the_vendored_crds_are_the_operators_trainer_v2_jobset_and_kueue_ones():
    """The operator's, Kubeflow Trainer v2.3.0's three (manifests/base/crds), JobSet v0.12.0's and Kueue v0.17.0's
    eleven (config/components/crd/bases; v1beta2 the storage version)."""
    served = {kind: (crd["metadata"]["name"], [v["name"] for v in crd["spec"]["versions"]], crd["spec"]["scope"])
              for (_, kind), crd in crds.crds().items()}
    assert served == {
        "PyTorchJob": ("pytorchjobs.kubeflow.org", ["v1"], "Namespaced"),
        "TrainJob": ("trainjobs.trainer.kubeflow.org", ["v1alpha1"], "Namespaced"),
        "TrainingRuntime": ("trainingruntimes.trainer.kubeflow.org", ["v1alpha1"], "Namespaced"),
        "ClusterTrainingRuntime": ("clustertrainingruntimes.trainer.kubeflow.org", ["v1alpha1"], "Cluster"),
        "JobSet": ("jobsets.jobset.x-k8s.io", ["v1alpha2"], "Namespaced"),
        "PodMonitor": ("podmonitors.monitoring.coreos.com", ["v1"], "Namespaced"),  # the Prometheus Operator's v0.93.0
        **{kind: (f"{plural}.kueue.x-k8s.io", ["v1beta1", "v1beta2"], "Namespaced" if kind in ("LocalQueue", "Workload")
                  else "Cluster")
           for kind, plural in (("AdmissionCheck", "admissionchecks"), ("ClusterQueue", "clusterqueues"),
                                ("Cohort", "cohorts"), ("LocalQueue", "localqueues"),
                                ("MultiKueueCluster", "multikueueclusters"), ("MultiKueueConfig", "multikueueconfigs"),
                                ("ProvisioningRequestConfig", "provisioningrequestconfigs"),
                                ("ResourceFlavor", "resourceflavors"), ("Topology", "topologies"),
                                ("WorkloadPriorityClass", "workloadpriorityclasses"), ("Workload", "workloads"))},
    }


def test_the_operators_init_container_template_is_admitted_under_restricted_pod_security():
    """k8s/operator/'s init-pytorch, filled in as the operator does, passes PSS `restricted`'s container rules."""
    text = open(os.path.join(REPO, "k8s", "operator", "pytorch-init-container.yaml.tmpl")).read()
    assert "<" not in text and ">" not in text  # the operator parses it with html/template
    filled = text.replace("{{.MasterAddr}}", "job-master-0").replace("{{.InitContainerImage}}", "img:1")
    (container,) = yaml.safe_load(filled)
    assert container["name"] == "init-pytorch" and "getent hosts job-master-0" in container["command"][-1]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and sc["seccompProfile"]["type"] == "RuntimeDefault"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"initContainers": [container], "containers": [{"name": "c", "image": "img:1"}]}}
    kubernetes_validate.validate(pod, "1.31.0", strict=True)
