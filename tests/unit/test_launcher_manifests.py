"""Every object `launch --dry-run` prints validates offline, over a table of flag combinations."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from launcher.cli import main
from tests.golden import cases
from tests.helpers import EXAMPLE, REPO
from trainer import contract

K8S_VERSION = "1.31.0"
CRD = os.path.join(REPO, "k8s", "crds", "kubeflow.org_pytorchjobs.yaml")
BASE = cases.LAUNCH_BASE
CASES = cases.LAUNCH


def dry_run(flags: list[str], capsys) -> list[dict]:
    assert main([EXAMPLE, *flags, "--dry-run", "-o", "json", "--", "--steps", "5"]) == 0
    doc = json.loads(capsys.readouterr().out)
    return doc if isinstance(doc, list) else [doc]


@functools.cache
def crd_schema() -> dict:
    crd = yaml.safe_load(open(CRD))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


def by_kind(objects):
    return {o["kind"]: o for o in objects}


@pytest.mark.parametrize("flags", CASES.values(), ids=CASES.keys())
def test_every_dry_run_object_validates(flags, capsys):
    objects = dry_run(BASE + flags, capsys)
    kinds = by_kind(objects)
    assert set(kinds) == {"PyTorchJob", "ConfigMap", "PodDisruptionBudget"}
    jsonschema.validate(kinds["PyTorchJob"], crd_schema())
    for obj in objects:
        if obj["kind"] != "PyTorchJob":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    for rtype, replica in kinds["PyTorchJob"]["spec"]["pytorchReplicaSpecs"].items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"job-a-{rtype.lower()}-0"},
               "spec": replica["template"]["spec"]}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def pod_spec(objects) -> dict:
    job = by_kind(objects)["PyTorchJob"]
    return next(iter(job["spec"]["pytorchReplicaSpecs"].values()))["template"]["spec"]


def test_two_nodes_of_eight_gpus(capsys):
    job = by_kind(dry_run(BASE + CASES["two-nodes"], capsys))["PyTorchJob"]
    reps = job["spec"]["pytorchReplicaSpecs"]
    assert (reps["Master"]["replicas"], reps["Worker"]["replicas"], job["spec"]["nprocPerNode"]) == (1, 1, "8")
    c = reps["Worker"]["template"]["spec"]["containers"][0]
    assert c["name"] == contract.CONTAINER_NAME
    assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert all(r["restartPolicy"] == "ExitCode" for r in reps.values())


def test_grace_is_one_number_for_the_pod_and_the_runtime(capsys):
    spec = pod_spec(dry_run(BASE + CASES["policies"], capsys))
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    assert spec["terminationGracePeriodSeconds"] == 90  # the kubelet's SIGKILL: the runtime's budget, whole seconds
    assert env[contract.ENV_GRACE_SECONDS] == "90"
    assert env[contract.ENV_RUN_ID] == "job-a" and env[contract.ENV_CHECKPOINT_URI] == "s3://bucket/ckpts"


def test_pods_meet_the_restricted_pod_security_standard(capsys):
    """The fields PSA `restricted` checks (its admission is exercised by the cluster tier)."""
    spec = pod_spec(dry_run(BASE + CASES["pvc-secret-shm"], capsys))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert "privileged" not in sc and "add" not in sc["capabilities"]
    allowed = {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected", "downwardAPI"}
    assert all(set(v) - {"name"} <= allowed for v in spec["volumes"])
    assert "hostNetwork" not in spec and "hostPID" not in spec


def test_credentials_come_only_by_secret_reference(capsys):
    spec = pod_spec(dry_run(BASE + CASES["pvc-secret-shm"], capsys))
    c = spec["containers"][0]
    assert c["envFrom"] == [{"secretRef": {"name": "aws-creds"}}]
    assert not any("SECRET" in e["name"] or "KEY" in e["name"] for e in c["env"])


def test_spot_require_ands_the_gpu_type_with_any_providers_spot_label(capsys):
    spec = pod_spec(dry_run(BASE + CASES["gpu-type-spot-require"], capsys))
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) >= 3
    for t in terms:
        keys = [e["key"] for e in t["matchExpressions"]]
        assert keys[0] == "nvidia.com/gpu.product" and len(keys) == 2
    assert {"kubernetes.azure.com/scalesetpriority", "cloud.google.com/gke-spot"} <= {
        t["key"] for t in spec["tolerations"]}


def test_elastic_jobs_have_only_workers_and_an_elastic_policy(capsys):
    job = by_kind(dry_run(BASE + CASES["elastic"], capsys))["PyTorchJob"]
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Worker"]
    assert job["spec"]["elasticPolicy"] == {"minReplicas": 2, "maxReplicas": 4, "rdzvBackend": "c10d",
                                            "maxRestarts": 3}


def test_gang_scheduling_sets_the_policy_and_scheduler(capsys):
    objects = dry_run(BASE + CASES["gang-volcano"], capsys)
    job = by_kind(objects)["PyTorchJob"]
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 2, "priorityClass": "spot-training"}
    assert pod_spec(objects)["schedulerName"] == "volcano"


@pytest.mark.parametrize("flags,floor", [(["--gpus", "16"], 1), (["--gpus", "8"], 0), (["--gpus", "32"], 3),
                                         (["--nodes", "2:4"], 2)])
def test_the_pdb_selects_the_operators_pod_label_and_allows_one_disruption(capsys, flags, floor):
    pdb = by_kind(dry_run(BASE + flags, capsys))["PodDisruptionBudget"]
    # minAvailable, an integer: maxUnavailable would need the PyTorchJob's scale subresource (Workers only)
    assert pdb["spec"] == {"minAvailable": floor,
                           "selector": {"matchLabels": {contract.OPERATOR_JOB_NAME_LABEL: "job-a"}}}


def test_yaml_output_has_no_anchors(capsys):
    assert main([EXAMPLE, *BASE, "--gpus", "16", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "&id" not in out and "*id" not in out
    assert [d["kind"] for d in yaml.safe_load_all(out)] == ["PyTorchJob", "ConfigMap", "PodDisruptionBudget"]


def test_the_launcher_never_imports_torch_or_kubernetes_for_a_dry_run():
    code = ("import sys; from launcher.cli import main; main(%r); "
            "print('IMPORTED', 'torch' in sys.modules, 'kubernetes' in sys.modules)") % (
        [EXAMPLE, *BASE, "--gpus", "8", "--dry-run"],)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "IMPORTED False False" in out
