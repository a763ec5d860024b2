"""The Helm chart in k8s/chart: lint-clean, renders exactly what `launch` renders, installs on the test cluster.

helm comes from cluster/build (the Go module proxy), like the control plane.
"""

from __future__ import annotations

import json
import os
import subprocess

import kubernetes_validate
import pytest
import yaml

from launcher.cli import main
from launcher.schedule.render import submitter_rbac
from tests.cluster.conftest import _cluster_bin
from tests.cluster.test_launcher_against_apiserver import namespace
from tests.helpers import EXAMPLE, REPO
from tests.unit.test_launcher_manifests import K8S_VERSION
from trainer import contract

pytestmark = pytest.mark.cluster

CHART = os.path.join(REPO, "k8s", "chart")
SCHEDULE = ["schedule", EXAMPLE, "--cron", "0 3 * * *", "--time-zone", "Europe/Berlin", "--gpus", "8",
            "--checkpoint", "s3://b/ckpts", "--warm-start-from", "latest", "--name", "nightly"]


@pytest.fixture(scope="module")
def helm() -> str:
    bin_dir = _cluster_bin()
    path = os.path.join(bin_dir or "", "helm")
    if not bin_dir or not os.access(path, os.X_OK):
        pytest.skip("cluster tier: needs helm; run cluster/build (it builds helm from the Go module proxy)")
    return path


def run_helm(helm: str, *args: str) -> str:
    r = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HELM_CACHE_HOME": "/tmp/kubetrain-helm/cache",
                            "HELM_CONFIG_HOME": "/tmp/kubetrain-helm/config", "HELM_DATA_HOME": "/tmp/kubetrain-helm/data"})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def launch_out(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.fixture
def values(capsys, tmp_path) -> str:
    path = tmp_path / "nightly.yaml"
    path.write_text(launch_out(capsys, *SCHEDULE, "--chart-values", "--", "--steps", "5"))
    return str(path)


def test_helm_lint_is_clean_with_and_without_schedules(helm, values):
    for extra in ([], ["-f", values]):
        out = run_helm(helm, "lint", "--strict", CHART, *extra)
        assert "0 chart(s) failed" in out and "[WARNING]" not in out and "[ERROR]" not in out, out


def test_the_chart_renders_what_launch_renders_and_every_object_validates(helm, values, capsys):
    rendered = [d for d in yaml.safe_load_all(run_helm(helm, "template", "kt", CHART, "-n", "team-x", "-f", values))
                if d]
    for obj in rendered:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    got = {(o["kind"], o["metadata"]["name"]): o for o in rendered}
    launched = json.loads(launch_out(capsys, *SCHEDULE, "-n", "team-x", "--dry-run", "-o", "json", "--",
                                     "--steps", "5"))
    # Every object `launch schedule` creates, the same, key for key (RBAC, CronJob, stored spec).
    assert {(o["kind"], o["metadata"]["name"]): o for o in launched} == {k: got[k] for k in got if k[0] in (
        "ServiceAccount", "Role", "RoleBinding", "CronJob", "ConfigMap")}
    assert [got[("ServiceAccount", "kubetrain-submitter")], got[("Role", "kubetrain-submitter")],
            got[("RoleBinding", "kubetrain-submitter")]] == submitter_rbac("team-x")
    # And the namespace's pieces from k8s/, as the files have them.
    for rel in ("k8s/namespace/resourcequota.yaml", "k8s/namespace/limitrange.yaml"):
        for doc in yaml.safe_load_all(open(os.path.join(REPO, rel))):
            doc["metadata"]["namespace"] = "team-x"
            assert got[(doc["kind"], doc["metadata"]["name"])] == doc
    for doc in yaml.safe_load_all(open(os.path.join(REPO, "k8s", "priorityclasses.yaml"))):
        assert got[("PriorityClass", doc["metadata"]["name"])] == doc


def test_the_chart_adds_kubeflow_trainer_v2s_runtime_and_the_trainjob_submitter_role_only_when_asked(helm):
    from launcher.backends import trainjob

    def kinds(*flags: str) -> dict:
        return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(
            run_helm(helm, "template", "kt", CHART, "-n", "team-x", *flags)) if o}

    default = kinds()
    assert ("ClusterTrainingRuntime", "kubetrain") not in default
    assert ("Role", "kubetrain-submitter-trainjob") not in default
    got = kinds("--set", "trainingRuntime.create=true", "--set", "rbac.trainJobs=true")
    (runtime,) = [d for d in yaml.safe_load_all(open(os.path.join(REPO, "k8s", "trainjob",
                                                                  "clustertrainingruntime.yaml"))) if d]
    assert got[("ClusterTrainingRuntime", "kubetrain")] == runtime
    role, binding = submitter_rbac("team-x", trainjob)[3:]
    assert got[("Role", role["metadata"]["name"])] == role and got[("RoleBinding", role["metadata"]["name"])] == binding
    out = run_helm(helm, "lint", "--strict", CHART, "--set", "trainingRuntime.create=true", "--set", "rbac.trainJobs=true")
    assert "0 chart(s) failed" in out and "[WARNING]" not in out, out


def test_helm_installs_the_chart_on_the_cluster_and_launch_triggers_its_schedule(
        helm, values, operator_cluster, monkeypatch, capsys):
    monkeypatch.setenv("KUBECONFIG", operator_cluster)
    from kubernetes import client, dynamic

    from launcher.k8s import api as kt

    api = kt.connect()
    ns = namespace(api)
    # PriorityClasses are cluster-wide and other tests' may exist: server-side dry-run for them, a real
    # install of everything else.
    run_helm(helm, "install", "kt", CHART, "-n", ns, "-f", values, "--set", "priorityClasses.create=false",
             "--kubeconfig", operator_cluster)
    dyn = dynamic.DynamicClient(api.core.api_client)
    out = run_helm(helm, "template", "kt", CHART, "-n", ns, "--show-only", "templates/priorityclasses.yaml")
    for doc in yaml.safe_load_all(out):
        if doc:
            dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"]).create(body=doc, dry_run="All")

    batch = client.BatchV1Api(api.core.api_client)
    assert batch.read_namespaced_cron_job("nightly", ns).spec.concurrency_policy == "Forbid"
    assert api.core.read_namespaced_config_map("nightly-schedule", ns).metadata.labels[contract.LABEL_SCHEDULE] == \
        "nightly"
    assert client.RbacAuthorizationV1Api(api.core.api_client).read_namespaced_role("kubetrain-submitter", ns).rules
    assert api.core.read_namespaced_resource_quota("gpu-quota", ns).spec.hard["requests.nvidia.com/gpu"] == "16"

    assert main(["schedule", "trigger", "nightly", "-n", ns]) == 0
    assert "triggered run" in capsys.readouterr().out
    jobs = batch.list_namespaced_job(ns, label_selector=f"{contract.LABEL_SCHEDULE}=nightly").items
    assert len(jobs) == 1 and jobs[0].metadata.owner_references[0].kind == "CronJob"
    run_helm(helm, "uninstall", "kt", "-n", ns, "--kubeconfig", operator_cluster)
