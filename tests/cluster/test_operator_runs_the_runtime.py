"""The real operator drives the real runtime: the pods of the job "real" run as local processes.

tests/cluster/pod_runner.py plays the kubelet for them: `python -m trainer run`
under torchrun with the operator's env, the code from the job's ConfigMap,
checkpoints on the job's PVC (a local folder), exit codes reported back.
"""

from __future__ import annotations

import json

import pytest

from tests.cluster.conftest import REAL_NAMESPACE
from tests.cluster.pod_runner import RUN_FOR_REAL
from tests.cluster.test_launcher_against_apiserver import launch
from tests.cluster.test_operator_runs_our_jobs import api, running_pod, wait  # noqa: F401 (api: the fixture)
from tests.helpers import EXAMPLE
from trainer import contract

pytestmark = pytest.mark.cluster

CLAIM = "checkpoints"


def ensure(create, *args) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        create(*args)
    except ApiException as e:
        if e.status != 409:
            raise


def real_namespace(api) -> str:
    """A fixed namespace: kwok serves the logs of the runner's pods there (conftest SERVED_LOGS)."""
    ensure(api.core.create_namespace, {"metadata": {"name": REAL_NAMESPACE}})
    ensure(api.core.create_namespaced_service_account, REAL_NAMESPACE, {"metadata": {"name": "default"}})
    # A claim bound to a volume, as the scheduler waits for unbound ones; the runner mounts a local folder.
    ensure(api.core.create_persistent_volume, {
        "metadata": {"name": f"{REAL_NAMESPACE}-{CLAIM}"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                 "hostPath": {"path": "/nonexistent/the-pod-runner-maps-it"},
                 "claimRef": {"namespace": REAL_NAMESPACE, "name": CLAIM}}})
    ensure(api.core.create_namespaced_persistent_volume_claim, REAL_NAMESPACE, {
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}},
                 "storageClassName": "", "volumeName": f"{REAL_NAMESPACE}-{CLAIM}"}})
    return REAL_NAMESPACE


def job_succeeded(api, ns: str) -> bool:
    job = api.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", RUN_FOR_REAL)
    return any(c["type"] == "Succeeded" and c["status"] == "True" for c in job.get("status", {}).get("conditions", []))


def cancel_real(api, capsys, ns: str) -> None:
    """Cancel, and wait while the runner (still on) finishes the pods' deletion, as the next test reuses the name."""
    launch(capsys, "cancel", RUN_FOR_REAL, "-n", ns)

    def gone():
        jobs = api.custom.list_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs")["items"]
        pods = api.core.list_namespaced_pod(ns, label_selector=f"{contract.LABEL_JOB}={RUN_FOR_REAL}").items
        return not jobs and not pods

    wait(gone, 120, "the cancelled job and its pods to go")


def latest_file(pod_runner, ns: str):
    """The job's `latest` on its PVC, as the runner mounts it (a local folder)."""
    return pod_runner.root / "pvc" / ns / CLAIM / RUN_FOR_REAL / contract.LATEST_NAME


def launch_real(capsys, ns: str, *script_args: str, launch_args: tuple[str, ...] = ()) -> None:
    code, _, err = launch(capsys, EXAMPLE, *launch_args, "--nodes", "2", "--nproc", "1", "--cpu", "1", "--memory", "2Gi",
                          "-n", ns, "--name", RUN_FOR_REAL, "--pvc", f"{CLAIM}:/checkpoints",
                          "--checkpoint", "/checkpoints", "--checkpoint-every-steps", "5",
                          "--", "--hidden", "16", "--samples", "2048", *script_args)
    assert code == 0, err


def test_the_operator_runs_the_runtime_on_two_pods_to_success(api, capsys, pod_runner):
    ns = real_namespace(api)
    # cleanPodPolicy None: the job succeeds when the master does, and the default (Running) would
    # then delete a worker still on its way out; here we want to see the worker's own exit.
    launch_real(capsys, ns, "--steps", "20", launch_args=("--clean-pod-policy", "None"))
    try:
        wait(lambda: job_succeeded(api, ns), 300, "the job to succeed")
        wait(lambda: len(pod_runner.exits) >= 2, 60, "both pods to exit")
        assert sorted(pod_runner.exits) == [(f"{RUN_FOR_REAL}-master-0", 0), (f"{RUN_FOR_REAL}-worker-0", 0)]
        latest = latest_file(pod_runner, ns)
        assert latest.read_text().strip().endswith("20")  # the final step, committed on the job's volume
        code, out, _ = launch(capsys, "logs", RUN_FOR_REAL, "-n", ns)
        assert code == 0 and "[master-0] [kubetrain] finished; exit 0" in out, out
        # No Kubeflow Trainer status endpoint in a PyTorchJob's pod (as with the gate off): nothing posted or said.
        assert "trainjob status" not in out, out
    finally:
        cancel_real(api, capsys, ns)


def test_a_deleted_pod_commits_its_checkpoint_and_the_job_resumes_to_success(api, capsys, pod_runner):
    ns = real_namespace(api)
    launch_real(capsys, ns, "--steps", "80", "--step-sleep", "0.1")
    try:
        latest = latest_file(pod_runner, ns)
        wait(lambda: latest.exists(), 240, f"a committed checkpoint at {latest}")
        master_selector = (f"{contract.OPERATOR_JOB_NAME_LABEL}={RUN_FOR_REAL},"
                           f"{contract.OPERATOR_REPLICA_TYPE_LABEL}=master")
        master = running_pod(api, ns, master_selector)
        # `kubectl delete pod`: SIGTERM, the ranks agree on a step, commit it, exit 143; the operator recreates.
        api.core.delete_namespaced_pod(master.metadata.name, ns)
        worker = f"{RUN_FOR_REAL}-worker-0"
        exits = wait(lambda: [c for name, c in pod_runner.exits if name == worker], 120, "the worker to stop")
        assert exits[0] == contract.ExitCode.PREEMPTED, pod_runner.exits  # retried, as the master is
        wait(lambda: job_succeeded(api, ns), 300, "the job to succeed after the restart")

        code, out, _ = launch(capsys, "status", RUN_FOR_REAL, "-n", ns, "-o", "json")
        status = json.loads(out)
        assert status["state"] == "Succeeded" and status["restarts"] >= 2, status
        resumed = {p["replica"]: p.get("resumed_from") for p in status["pods"]}
        assert (resumed.get("master-0") or 0) >= 5, status["pods"]  # read from the runtime's own log
    finally:
        cancel_real(api, capsys, ns)


def test_launch_chaos_kills_a_worker_and_reports_the_step_the_real_runtime_resumed_from(api, capsys, pod_runner):
    ns = real_namespace(api)
    launch_real(capsys, ns, "--steps", "120", "--step-sleep", "0.1")
    try:
        latest = latest_file(pod_runner, ns)
        wait(lambda: latest.exists(), 240, f"a committed checkpoint at {latest}")
        code, out, err = launch(capsys, "chaos", RUN_FOR_REAL, "-n", ns, "--kill-pod", "worker-0", "--wait", "240s")
        assert code == 0, out + err
        assert f"deleted worker-0 ({RUN_FOR_REAL}-worker-0)" in out and "grace 0" in out, out
        assert "resumed from step " in out, out + (pod_runner.log_dir / f"{RUN_FOR_REAL}-worker-0.log").read_text()[-3000:]
        resumed = int(out.split("resumed from step ")[1].split()[0].rstrip(";"))
        assert resumed >= 5, out  # a committed step (periodic, every 5, or a stop step), read from its log
        wait(lambda: job_succeeded(api, ns), 300, "the job to succeed after the chaos")
    finally:
        cancel_real(api, capsys, ns)
