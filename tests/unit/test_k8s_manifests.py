"""The cluster-side YAML in k8s/ validates against the Kubernetes OpenAPI schemas, offline."""

import glob
import os

import kubernetes_validate
import pytest
import yaml

from tests.helpers import REPO

FILES = sorted(f for f in glob.glob(os.path.join(REPO, "k8s", "**", "*.yaml"), recursive=True)
               if "/crds/" not in f and "/chart/" not in f  # the Helm chart: tests/*/test_schedule_chart*.py
               and "/kind/" not in f)  # kind's own Cluster config: tests/cluster/test_kind_files.py


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(f, REPO) for f in FILES])
def test_k8s_manifest_validates(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("kwok.x-k8s.io/"):
            assert doc["kind"] == "Stage" and doc["spec"]["resourceRef"]["kind"] == "Pod" or \
                doc["spec"]["resourceRef"]["kind"] in ("Node", "Lease")
            continue  # kwok's own kinds: the cluster tier loads them into kwok
        kubernetes_validate.validate(doc, "1.31.0", strict=True)


def test_the_vendored_crd_is_the_pytorchjob_v1_crd():
    crd = yaml.safe_load(open(os.path.join(REPO, "k8s", "crds", "kubeflow.org_pytorchjobs.yaml")))
    assert crd["metadata"]["name"] == "pytorchjobs.kubeflow.org"
    assert [v["name"] for v in crd["spec"]["versions"]] == ["v1"]
