"""The runtime's progress in a TrainJob's status, through Kubeflow Trainer v2.3.0's own status server.

The Trainer controller runs with its TrainJobStatus gate on (tests/cluster/trainer_v2.py); its
plugin gives the TrainJob's pod the endpoint, its CA (a ConfigMap) and a projected token (audience:
the TrainJob's status path); the pod runner plays the kubelet for them (tests/cluster/pod_runner.py),
and the real runtime runs examples/train.py. Node 0's supervisor posts; the server verifies the
token against the API server's keys and applies `status.trainerStatus`, which we read back.
Without the gate (a PyTorchJob pod, test_operator_runs_the_runtime.py) nothing is posted or logged.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster import trainer_v2
from tests.cluster.pod_runner import RUN_FOR_REAL
from tests.cluster.test_launcher_against_apiserver import launch
from tests.cluster.test_operator_runs_our_jobs import api, wait  # noqa: F401 (api: the fixture)
from tests.cluster.test_operator_runs_the_runtime import CLAIM, latest_file, real_namespace
from tests.helpers import EXAMPLE
from trainer import contract

pytestmark = pytest.mark.cluster

STEPS = 60


def trainer_status(api, ns: str) -> dict:
    job = api.custom.get_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", ns, "trainjobs", RUN_FOR_REAL)
    return (job.get("status") or {}).get("trainerStatus") or {}


def metrics(status: dict) -> dict[str, str]:
    return {m["name"]: m["value"] for m in status.get("metrics") or []}


def test_node_0_posts_progress_and_the_last_committed_step_into_the_trainjob_status(
        api, trainjob_cluster, pod_runner, capsys):
    if not trainer_v2.can_isolate():
        pytest.skip("the Trainer's status server needs a mount namespace of its own here (unshare --mount)")
    from kubernetes.client.exceptions import ApiException

    ns = real_namespace(api)
    job = trainer_v2.trainjob(
        RUN_FOR_REAL, ns, num_proc_per_node=1,
        args=[EXAMPLE, "--steps", str(STEPS), "--step-sleep", "0.15", "--hidden", "16", "--samples", "2048"],
        env={contract.ENV_CHECKPOINT_URI: "/checkpoints", contract.ENV_RUN_ID: RUN_FOR_REAL,
             contract.ENV_CHECKPOINT_EVERY_STEPS: "10", contract.ENV_TRAINJOB_STATUS_SECONDS: "1"},
        resources_per_node={"requests": {"cpu": "1", "memory": "1Gi"}},
        pod_labels={contract.LABEL_JOB: RUN_FOR_REAL},
        pod_spec={"volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": CLAIM}}],
                  "containers": [{"name": trainer_v2.TRAINER_CONTAINER,
                                  "volumeMounts": [{"name": "ckpt", "mountPath": "/checkpoints"}]}]})
    api.custom.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", ns, "trainjobs", job)
    try:
        seen: list[dict] = []

        def finished():
            status = trainer_status(api, ns)
            if status and (not seen or status != seen[-1]):
                seen.append(status)
            return status.get("progressPercentage") == 100 and metrics(status).get("last_committed_step") == str(STEPS)

        t0 = time.monotonic()
        wait(finished, 180, "the final progress in status.trainerStatus",
             lambda: f"seen: {seen}\nexits: {pod_runner.exits}")
        took = time.monotonic() - t0
        # Moving: several posts on the way, each step and percentage at least the one before.
        steps = [int(metrics(s)["step"]) for s in seen if "step" in metrics(s)]
        assert len(steps) >= 3 and steps == sorted(steps) and steps[0] < STEPS, seen
        pcts = [s["progressPercentage"] for s in seen if "progressPercentage" in s]  # once the total is declared
        assert pcts == sorted(pcts) and pcts[0] < 100, seen
        committed = [int(metrics(s)["last_committed_step"]) for s in seen if "last_committed_step" in metrics(s)]
        assert committed and all(c % 10 == 0 for c in committed), seen  # the checkpoint cadence
        last = seen[-1]
        assert last["estimatedRemainingSeconds"] == 0 and metrics(last)["total_steps"] == str(STEPS)
        assert 0 <= float(metrics(last)["goodput"]) <= 1 and last["lastUpdatedTime"].endswith("Z")
        assert any("estimatedRemainingSeconds" in s and s["estimatedRemainingSeconds"] > 0 for s in seen), seen
        assert latest_file(pod_runner, ns).read_text().strip().endswith(str(STEPS))
        wait(lambda: pod_runner.exits, 60, "the pod to exit")
        assert pod_runner.exits == [(pod_runner.exits[0][0], 0)]
        log = next(pod_runner.log_dir.glob(f"{RUN_FOR_REAL}-node-0-0-*.log")).read_text()
        assert "trainjob status: posting progress to https://127.0.0.1:" in log, log
        assert "cannot post" not in log, log
        # `launch status` shows what was posted, in its text and its JSON.
        code, out, err = launch(capsys, "status", RUN_FOR_REAL, "-n", ns)
        assert code == 0, err
        assert f"  trainer   100% (step {STEPS} of {STEPS}), 0s left; committed {STEPS}; goodput " in out, out
        doc = json.loads(launch(capsys, "status", RUN_FOR_REAL, "-n", ns, "-o", "json")[1])
        assert doc["trainer_status"]["progress_percent"] == 100, doc
        assert doc["trainer_status"]["metrics"]["last_committed_step"] == str(STEPS), doc
        print(f"\ntrainerStatus seen {len(seen)} times over {took:.0f}s:")
        for s in seen:
            print(f"  {s}")
    finally:
        try:
            api.custom.delete_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", ns, "trainjobs",
                                                       RUN_FOR_REAL, propagation_policy="Foreground")
        except ApiException as e:
            if e.status != 404:
                raise
        wait(lambda: not api.core.list_namespaced_pod(
            ns, label_selector=f"{contract.LABEL_JOB}={RUN_FOR_REAL}").items, 120, "the TrainJob's pods to go")
