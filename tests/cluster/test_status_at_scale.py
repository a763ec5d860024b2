"""`launch status` at 128 pods, and why a job waits: on the operator cluster with extra kwok nodes."""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster.scale import SCALE_GPU_PRODUCT, scale_nodes, wait_running
from tests.cluster.test_launcher_against_apiserver import NOTHING, launch, leftovers, namespace
from tests.cluster.test_operator_runs_our_jobs import api, wait  # noqa: F401 (api: the fixture)
from tests.helpers import EXAMPLE
from trainer import contract

pytestmark = pytest.mark.cluster

PODS = 128


def submit(capsys, ns: str, name: str, *flags: str) -> tuple[int, str, str]:
    return launch(capsys, EXAMPLE, "--checkpoint", "s3://b/c", "-n", ns, "--name", name, *flags)


def test_a_fresh_128_pod_job_shows_0_restarts_a_summary_and_no_pod_table(api, capsys):
    ns = namespace(api)
    with scale_nodes(api.core, 16):  # 16 x 8 GPUs: 128 one-GPU pods
        # "held": kwok leaves its pods Running (k8s/kwok/stages.yaml).
        code, _, err = submit(capsys, ns, "held", "--gpus", str(PODS), "--gpus-per-node", "1",
                              "--gpu-type", SCALE_GPU_PRODUCT)
        assert code == 0, err
        try:
            running = wait_running(api.core, ns, "held", PODS)
            code, out, err = launch(capsys, "status", "held", "-n", ns, "-o", "json")
            assert code == 0, err
            doc = json.loads(out)
            assert doc["restarts"] == 0 and doc["restarts_by_pod"] == {}, doc["restarts_by_pod"]
            assert doc["retries_left"] == contract_backoff(api, ns)
            assert len(doc["pods"]) == PODS
            # Settled pods come from the Table's columns and their protobuf metadata (launcher/k8s/pods.py):
            # each as the API has it.
            assert {p["pod"]: (p["uid"], p["node"]) for p in doc["pods"]} == {
                p.metadata.name: (p.metadata.uid, p.spec.node_name) for p in running}
            assert {p["replica"] for p in doc["pods"]} == {"master-0", *(f"worker-{i}" for i in range(PODS - 1))}

            code, out, err = launch(capsys, "status", "held", "-n", ns)
            lines = out.splitlines()
            assert code == 0 and lines[0].startswith(f"{ns}/held: ") and "(restarts 0," in lines[0], out
            assert lines[1].strip() == f"pods      {PODS}/{PODS} Running", out
            assert len(lines) < 12 and "worker-1 " not in out, out  # healthy pods are not listed

            code, out, _ = launch(capsys, "status", "held", "-n", ns, "--pods")
            replicas = [line.split()[0] for line in out.splitlines() if line.startswith("  master-")
                        or line.startswith("  worker-")]
            assert replicas[:3] == ["master-0", "worker-0", "worker-1"] and replicas[-1] == f"worker-{PODS - 2}"
            assert replicas.index("worker-2") < replicas.index("worker-10"), replicas
        finally:
            launch(capsys, "cancel", "held", "-n", ns)
            wait(lambda: not api.core.list_namespaced_pod(ns).items, 120, "the pods to go")


def contract_backoff(api, ns: str) -> int:
    job = api.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", "held")
    return job["spec"]["runPolicy"]["backoffLimit"]


def test_a_new_job_reusing_a_cancelled_jobs_name_shows_0_restarts(api, capsys):
    ns = namespace(api)
    code, _, err = submit(capsys, ns, "held", "--gpus", "2", "--gpus-per-node", "1")
    assert code == 0, err
    wait_running(api.core, ns, "held", 2, timeout=120)
    assert launch(capsys, "cancel", "held", "-n", ns)[0] == 0
    # The old pods are still terminating (kwok finishes them) when the new job of the same name starts.
    wait(lambda: leftovers(api, ns, "held") == NOTHING, 60, "the cancelled job's objects to go")
    code, _, err = submit(capsys, ns, "held", "--gpus", "2", "--gpus-per-node", "1")
    assert code == 0, err
    try:
        wait(lambda: len([p for p in api.core.list_namespaced_pod(ns).items
                          if not p.metadata.deletion_timestamp and p.status.phase == "Running"]) == 2
             and len(api.core.list_namespaced_pod(ns).items) == 2, 120, "the new job's two pods alone")
        code, out, err = launch(capsys, "status", "held", "-n", ns, "-o", "json")
        doc = json.loads(out)
        assert code == 0 and doc["restarts"] == 0 and doc["retries_left"] == contract_backoff(api, ns), doc
    finally:
        launch(capsys, "cancel", "held", "-n", ns)


def test_a_duplicate_name_suggests_name(api, capsys):
    ns = namespace(api)
    assert submit(capsys, ns, "dup", "--gpus", "8")[0] == 0
    try:
        code, _, err = submit(capsys, ns, "dup", "--gpus", "8")
        assert code == 2 and "pick another --name" in err and len(err.strip().splitlines()) == 1, err
    finally:
        launch(capsys, "cancel", "dup", "-n", ns)


def test_an_unschedulable_pod_shows_the_schedulers_message(api, capsys):
    ns = namespace(api)
    assert submit(capsys, ns, "nogpu", "--gpus", "8", "--gpu-type", "NVIDIA-B200")[0] == 0
    try:
        def said():
            out = launch(capsys, "status", "nogpu", "-n", ns)[1]
            return out if "unschedulable: 0/" in out else None

        out = wait(said, 60, "the scheduler's message in status")
        assert "nodes are available" in out and "Pending" in out, out
    finally:
        launch(capsys, "cancel", "nogpu", "-n", ns)


def test_gang_without_its_podgroup_crd_is_refused_and_nothing_is_created(api, capsys):
    ns = namespace(api)
    code, _, err = submit(capsys, ns, "gang", "--gpus", "16", "--gang", "volcano")
    assert code == 2 and "podgroups.scheduling.volcano.sh" in err and len(err.strip().splitlines()) == 1, err
    assert not api.custom.list_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs")["items"]


def test_pod_security_restricted_warns_at_submit_and_status_says_why_workers_are_missing(api, capsys):
    ns = namespace(api)
    api.core.patch_namespace(ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    code, out, err = submit(capsys, ns, "psa", "--gpus", "16", "--gpus-per-node", "8")
    assert code == 0 and "k8s/operator/pytorch-init-container.yaml.tmpl" in err, err
    assert len([line for line in err.splitlines() if "warning" in line]) == 1, err
    try:
        def said():
            out = launch(capsys, "status", "psa", "-n", ns)[1]
            return out if "why: the operator cannot create the pods" in out else None

        out = wait(said, 90, "status to say why the worker is missing")
        assert "PodSecurity" in out and "init-pytorch" in out, out
    finally:
        launch(capsys, "cancel", "psa", "-n", ns)


def test_logs_follow_of_a_pending_job_says_what_it_waits_for(api, capsys, operator_cluster):
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    ns = namespace(api)
    assert submit(capsys, ns, "pend", "--gpus", "8", "--gpu-type", "NVIDIA-B200")[0] == 0
    try:
        wait(lambda: api.core.list_namespaced_pod(ns).items, 60, "the pod")
        p = subprocess.Popen([sys.executable, "-c", "import sys; from launcher.cli import main; "
                              "sys.exit(main(sys.argv[1:]))", "logs", "pend", "-n", ns, "-f"], cwd=REPO,
                             env={**os.environ, "KUBECONFIG": operator_cluster}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            line = p.stderr.readline()
        finally:
            p.kill()
            p.wait()
        assert "Pending, waiting for it:" in line and ("unschedulable" in line or "scheduled" in line), line
    finally:
        launch(capsys, "cancel", "pend", "-n", ns)
        time.sleep(0)
