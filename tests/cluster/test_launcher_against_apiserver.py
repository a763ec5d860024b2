"""`launch` against a real kube-apiserver: preflight, all-or-none creation, list, status, cancel."""

from __future__ import annotations

import uuid

import pytest

from launcher.cli import main
from tests.cluster.conftest import install_crd
from tests.helpers import EXAMPLE
from trainer import contract

pytestmark = pytest.mark.cluster


def launch(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def namespace(api, *, gpu_quota: str | None = None) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    api.core.create_namespace({"metadata": {"name": name}})
    # Pod admission looks it up; the controller-manager creates it where one runs.
    from kubernetes.client.exceptions import ApiException

    try:
        api.core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
    except ApiException as e:
        if e.status != 409:
            raise
    hard = {}
    if gpu_quota is not None:
        hard["requests.nvidia.com/gpu"] = gpu_quota
    if hard:
        api.core.create_namespaced_resource_quota(name, {"metadata": {"name": "q"}, "spec": {"hard": hard}})
    return name


def leftovers(api, ns: str, name: str) -> dict:
    selector = f"{contract.LABEL_JOB}={name}"
    return {
        "jobs": [j["metadata"]["name"] for j in api.custom.list_namespaced_custom_object(
            "kubeflow.org", "v1", ns, "pytorchjobs")["items"]],
        "configmaps": [c.metadata.name for c in api.core.list_namespaced_config_map(ns, label_selector=selector).items],
        "pdbs": [p.metadata.name for p in api.policy.list_namespaced_pod_disruption_budget(
            ns, label_selector=selector).items],
    }


NOTHING = {"jobs": [], "configmaps": [], "pdbs": []}


def test_0_a_missing_crd_is_named_before_anything_is_created(kube, capsys):
    # Runs first (file order): the CRD is installed by the tests after it.
    if kube.ext.list_custom_resource_definition().items:
        pytest.skip("a CRD is already installed on this control plane")
    code, _, err = launch(capsys, EXAMPLE, "--gpus", "8", "--checkpoint", "s3://b/c")
    assert code == 2 and "no pytorchjobs.kubeflow.org CRD" in err


@pytest.fixture
def cluster(kube):
    install_crd(kube)
    return kube


def test_submit_list_status_cancel_leaves_nothing_behind(cluster, capsys):
    ns = namespace(cluster)
    code, out, err = launch(capsys, EXAMPLE, "--gpus", "16", "--gpus-per-node", "8", "--checkpoint", "s3://b/c",
                            "-n", ns, "--name", "job-a", "--", "--steps", "10")
    assert code == 0, err
    assert "created PyTorchJob" in out
    job = cluster.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", "job-a")
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    cm = cluster.core.read_namespaced_config_map("job-a-code", ns)
    owner = cm.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == ("PyTorchJob", "job-a", job["metadata"]["uid"])
    assert leftovers(cluster, ns, "job-a")["pdbs"] == ["job-a"]

    code, out, err = launch(capsys, "list", "-n", ns)
    assert code == 0 and "job-a" in out
    code, out, err = launch(capsys, "status", "job-a", "-n", ns)
    assert code == 0 and f"{ns}/job-a" in out, err
    code, out, err = launch(capsys, "status", "job-a", "-n", ns, "-o", "json")
    assert code == 0 and '"retries_left": 3' in out

    code, out, err = launch(capsys, "cancel", "job-a", "-n", ns)
    assert code == 0, err
    import time

    deadline = time.monotonic() + 30  # foreground deletion finishes asynchronously
    while leftovers(cluster, ns, "job-a") != NOTHING and time.monotonic() < deadline:
        time.sleep(0.3)
    assert leftovers(cluster, ns, "job-a") == NOTHING


def test_a_quota_too_small_is_refused_before_anything_is_created(cluster, capsys):
    ns = namespace(cluster, gpu_quota="8")
    code, _, err = launch(capsys, EXAMPLE, "--gpus", "16", "--checkpoint", "s3://b/c", "-n", ns, "--name", "big")
    assert code == 2 and "room for 8 nvidia.com/gpu" in err and "asks for 16" in err
    assert leftovers(cluster, ns, "big") == NOTHING
    code, _, err = launch(capsys, EXAMPLE, "--gpus", "8", "--checkpoint", "s3://b/c", "-n", ns, "--name", "fits")
    assert code == 0, err
    assert launch(capsys, "cancel", "fits", "-n", ns)[0] == 0  # its pods would hold GPU nodes in later tests


@pytest.mark.parametrize("flags,needle", [
    (["--secret-env", "aws-creds"], "--secret-env aws-creds: no such Secret"),
    (["--pvc", "data:/data"], "--pvc data: no such PersistentVolumeClaim"),
    (["--priority-class", "nope"], "--priority-class nope: no such PriorityClass"),
    (["-n", "no-such-namespace"], "namespace 'no-such-namespace' does not exist"),
], ids=["secret", "pvc", "priority-class", "namespace"])
def test_missing_references_are_named(cluster, capsys, flags, needle):
    ns = namespace(cluster)
    code, _, err = launch(capsys, EXAMPLE, "--gpus", "8", "--checkpoint", "s3://b/c", "-n", ns, "--name", "j", *flags)
    assert code == 2 and needle in err, err
    assert leftovers(cluster, ns, "j") == NOTHING


def test_a_failure_midway_rolls_back_what_it_created_and_only_that(cluster, capsys):
    # Someone else's ConfigMap holds the name: the job is created first, the ConfigMap
    # then fails with 409, and the job must go again while their ConfigMap stays.
    ns = namespace(cluster)
    cluster.core.create_namespaced_config_map(ns, {"metadata": {"name": "half-code"}, "data": {"mine": "yes"}})
    code, _, err = launch(capsys, EXAMPLE, "--gpus", "8", "--checkpoint", "s3://b/c", "-n", ns, "--name", "half")
    assert code == 1 and "creating the code ConfigMap" in err and "HTTP 409" in err, err
    import time

    deadline = time.monotonic() + 30
    while leftovers(cluster, ns, "half") != NOTHING and time.monotonic() < deadline:
        time.sleep(0.3)
    assert leftovers(cluster, ns, "half") == NOTHING
    assert cluster.core.read_namespaced_config_map("half-code", ns).data == {"mine": "yes"}


def test_status_of_an_unknown_job_is_one_line(cluster, capsys):
    ns = namespace(cluster)
    code, _, err = launch(capsys, "status", "nope", "-n", ns)
    assert code == 2 and "no PyTorchJob or TrainJob 'nope'" in err and len(err.strip().splitlines()) == 1


def test_a_namespace_enforcing_restricted_pod_security_admits_our_pods(cluster, capsys):
    import json

    from kubernetes.client.exceptions import ApiException

    ns = namespace(cluster)
    cluster.core.patch_namespace(ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    code, out, err = launch(capsys, EXAMPLE, "--gpus", "8", "--checkpoint", "s3://b/c", "--pvc", "data:/data",
                            "--secret-env", "creds", "--dry-run", "-o", "json")
    assert code == 0, err
    template = json.loads(out)[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ours", **template["metadata"]},
           "spec": template["spec"]}
    cluster.core.create_namespaced_pod(ns, pod, dry_run="All")  # admitted: raises otherwise

    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    with pytest.raises(ApiException) as refused:  # the control: PSA is really enforcing here
        cluster.core.create_namespaced_pod(ns, bare, dry_run="All")
    assert refused.value.status == 403 and "restricted" in refused.value.body
