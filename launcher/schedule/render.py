"""Pure builders for schedules: spec in, dicts out. No clock, randomness, env or network.

`schedule_to_objects` returns every object `launch schedule` creates, in
creation order; `--dry-run` prints exactly this list, and the Helm chart in
k8s/chart renders the same dicts (see scripts/gen-chart). `run_to_objects`
is what the in-cluster submitter creates for one run: `launch`'s own
`spec_to_objects`, named for the run.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from types import ModuleType
from typing import Any

from launcher import backends
from launcher.job import render
from launcher.job.render import RUNTIME_UID, CodeRef
from launcher.schedule.spec import ScheduleSpec, StoredSchedule, SubmitExit, stored_to_dict
from trainer import contract

SUBMITTER = "kubetrain-submitter"  # the ServiceAccount, Role and RoleBinding, one set per namespace
SUBMITTER_CONTAINER = "submitter"
STORED_KEY = "schedule.json"
#: `python -m launcher.submit`: a name CronJobs already in clusters run, kept where it is (launcher/submit.py).
SUBMITTER_COMMAND = ["python", "-m", "launcher.submit"]
#: The submitter reads its schedule, creates one training job (with its code ConfigMap and PDB,
#: deleting them again if the creation fails half-way), watches it, checks the quota, and lists
#: the schedule's Jobs and training jobs (Forbid). Nothing cluster-scoped, no Secrets, no pods,
#: nothing in another namespace. What it does with the job's own kind is its backend's.
SUBMITTER_RULES: tuple[dict[str, Any], ...] = (
    *backends.DEFAULT.SUBMITTER_RULES,
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "delete"]},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["create", "delete"]},
    {"apiGroups": [""], "resources": ["resourcequotas"], "verbs": ["list"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list"]},
)


def schedule_labels(name: str) -> dict[str, str]:
    return {contract.LABEL_MANAGED_BY: contract.MANAGED_BY, contract.LABEL_SCHEDULE: name}


def stored_configmap_name(name: str) -> str:
    return f"{name}-schedule"


def _meta(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels}


def submitter_rbac(namespace: str, backend: ModuleType = backends.DEFAULT) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of the submitter: its own namespace only.

    Another backend's rules are a Role and RoleBinding of their own (SUBMITTER-KIND), so that
    schedules of either kind in one namespace never replace each other's rights.
    """
    labels = {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}
    extra = []
    if backend is not backends.DEFAULT:
        role = f"{SUBMITTER}-{backend.KIND.lower()}"
        extra = [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(role, namespace, labels),
             "rules": [copy.deepcopy(r) for r in backend.SUBMITTER_RULES]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(role, namespace, labels),
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
             "subjects": [{"kind": "ServiceAccount", "name": SUBMITTER, "namespace": namespace}]}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(SUBMITTER, namespace, labels)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(SUBMITTER, namespace, labels),
         "rules": [copy.deepcopy(r) for r in SUBMITTER_RULES]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta(SUBMITTER, namespace, labels),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SUBMITTER},
         "subjects": [{"kind": "ServiceAccount", "name": SUBMITTER, "namespace": namespace}]},
        *extra,
    ]


def schedule_to_configmap(schedule: ScheduleSpec, *, image: str, code: CodeRef) -> dict[str, Any]:
    """The stored spec: the JobSpec, image and code reference as JSON, and the code bundle itself."""
    cm: dict[str, Any] = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": _meta(stored_configmap_name(schedule.name), schedule.job.namespace, schedule_labels(schedule.name)),
        "data": {STORED_KEY: json.dumps(stored_to_dict(schedule, image=image, code=code), indent=1, sort_keys=True)},
    }
    if code.configmap_data is not None:
        cm["binaryData"] = {contract.CODE_BUNDLE_NAME: base64.b64encode(code.configmap_data).decode()}
    return cm


def _submitter_pod(schedule: ScheduleSpec, *, image: str) -> dict[str, Any]:
    env = [
        {"name": contract.ENV_SCHEDULE, "value": schedule.name},
        {"name": contract.ENV_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        # The Job's name names the run: unique per scheduled time, and the same when the Job retries the pod.
        {"name": contract.ENV_RUN_NAME,
         "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{contract.JOB_NAME_LABEL}']"}}},
    ]
    return {
        "metadata": {"labels": schedule_labels(schedule.name)},
        "spec": {
            "restartPolicy": "Never",  # the Job retries; podFailurePolicy needs Never
            "serviceAccountName": SUBMITTER,
            "automountServiceAccountToken": True,  # its only credential: the submitter's own token
            "securityContext": {"runAsNonRoot": True, "runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": SUBMITTER_CONTAINER,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": list(SUBMITTER_COMMAND),
                "env": env,
                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "runAsNonRoot": True, "readOnlyRootFilesystem": True,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
            }],
        },
    }


def schedule_to_cronjob(schedule: ScheduleSpec, *, image: str) -> dict[str, Any]:
    """The batch/v1 CronJob: each run a Job whose pod submits the PyTorchJob and exits with its result."""
    labels = schedule_labels(schedule.name)
    job_spec = {
        "backoffLimit": 2,
        "podFailurePolicy": {"rules": [
            # A failed retrain fails the Job at once (CronJob history); API hiccups are retried.
            {"action": "FailJob", "onExitCodes": {"containerName": SUBMITTER_CONTAINER, "operator": "In",
                                                  "values": list(SubmitExit.permanent())}},
            # An evicted or preempted submitter pod is not the retrain's failure.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": _submitter_pod(schedule, image=image),
    }
    spec: dict[str, Any] = {
        "schedule": schedule.cron,
        # Never two runs of one schedule at once: they would race for the GPUs and the warm start.
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": schedule.starting_deadline_seconds,
        "successfulJobsHistoryLimit": schedule.successful_history,
        "failedJobsHistoryLimit": schedule.failed_history,
        "jobTemplate": {"metadata": {"labels": dict(labels)}, "spec": job_spec},  # copies: no YAML anchors
    }
    if schedule.time_zone:
        spec["timeZone"] = schedule.time_zone
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": _meta(schedule.name, schedule.job.namespace, labels),
            "spec": spec}


def schedule_to_objects(schedule: ScheduleSpec, *, image: str, code: CodeRef) -> list[dict[str, Any]]:
    """Everything `launch schedule` creates: the submitter's RBAC, the CronJob, then its stored spec."""
    return [*submitter_rbac(schedule.job.namespace, backends.BACKENDS[schedule.backend]), schedule_to_cronjob(schedule, image=image),
            schedule_to_configmap(schedule, image=image, code=code)]


def cronjob_to_job(cronjob: dict[str, Any], *, name: str) -> dict[str, Any]:
    """A Job from the CronJob's jobTemplate, as `kubectl create job --from=cronjob/...` makes it."""
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"])
    meta = cronjob["metadata"]
    owner = {"apiVersion": "batch/v1", "kind": "CronJob", "name": meta["name"], "uid": meta["uid"],
             "controller": True, "blockOwnerDeletion": True}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": meta["namespace"],
                         "labels": (template.get("metadata") or {}).get("labels") or {},
                         "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
                         "ownerReferences": [owner]},
            "spec": template["spec"]}


def run_to_objects(stored: StoredSchedule, *, run_name: str, namespace: str) -> list[dict[str, Any]]:
    """One run's objects: `launch`'s own, named for the run, labelled with its schedule, warm start set."""
    schedule = stored.schedule
    spec = dataclasses.replace(schedule.job, namespace=namespace)
    objects = render.spec_to_objects(spec, name=run_name, code=stored.code, image=stored.image,
                                     backend=backends.BACKENDS[schedule.backend])
    for obj in objects:
        obj["metadata"]["labels"][contract.LABEL_SCHEDULE] = schedule.name
    if schedule.warm_start_from:
        env = [{"name": contract.ENV_WARM_START_FROM, "value": schedule.warm_start_from},
               {"name": contract.ENV_WARM_START_OPTIMIZER, "value": "1" if schedule.warm_start_optimizer else "0"}]
        backends.of(objects[0]).add_env(objects[0], env)
    return objects
