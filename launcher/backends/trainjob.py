"""Kubeflow Trainer v2's TrainJob (trainer.kubeflow.org/v1alpha1, v2.3.0), run by JobSet on our runtime.

A TrainJob names a training runtime (k8s/trainjob/clustertrainingruntime.yaml: the
ClusterTrainingRuntime `kubetrain`) and sets only what its API has: the trainer's image,
args, env, nodes, ranks per node and resources. It has no pod template: the rest of the pod
`launch` renders (labels, volumes, mounts, affinity, tolerations, grace period, service
account) goes in a `spec.runtimePatches` entry of ours, which the Trainer merges into the
runtime's JobSet. What no TrainJob can patch (the JobSet's failurePolicy.maxRestarts, the
pods' priorityClassName and schedulerName, a container's envFrom) a job that needs it gets
from a namespaced TrainingRuntime of its own, named after the job (`companions`): created
first, owned by the TrainJob once that exists, deleted with it. Chosen over refusing those
flags because --max-restarts, --priority-class, --gang and --secret-env work on PyTorchJob
and a user switching backends should not lose them; and rendered here rather than cloned
from the cluster's runtime so that `--dry-run` prints offline exactly what is created.

The exit-code contract is policy the cluster enforces (the runtime's podFailurePolicy and
failurePolicy): 143 and disruptions are free, 1-127 fail at once, the rest restart every
node until maxRestarts restarts are spent. Pure: dicts in, dicts out.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from launcher.backends.protocol import RUNTIME_COMMAND, JobShape, Pod
from trainer import contract

KIND = "TrainJob"
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_MISSING = ("install Kubeflow Trainer v2 (kubectl apply --server-side -k "
               "\"github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0\") and "
               "k8s/trainjob/clustertrainingruntime.yaml")
#: The container the Trainer's plugins fill (image, command, env, PET_*): `node`, not `pytorch`.
CONTAINER = "node"
#: The JobSet controller labels each pod with its JobSet's name, which is the TrainJob's.
POD_JOB_LABEL = "jobset.sigs.k8s.io/jobset-name"
#: Its pods' controller is a Job of its JobSet, not the TrainJob: they are found by the label alone.
OWNS_PODS = False
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
RESTART_ATTEMPT_LABEL = "jobset.sigs.k8s.io/restart-attempt"
#: Set by the Job controller on an Indexed Job's pods: the node rank here.
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
#: The replicated Job our runtime runs the trainer in (constants.Node upstream).
TRAINER_JOB = "node"
#: The rank-0 pod's replica (`launch chaos --kill-pod master`): node rank 0.
FIRST_REPLICA = f"{TRAINER_JOB}-0"
#: Flags (their argparse dest) a TrainJob cannot honour, and why: `launch` warns when one is given.
IGNORED_FLAGS = {
    "ttl": "has no effect on a TrainJob: Trainer v2.3.0 has no ttlSecondsAfterFinished; delete it with `launch cancel`",
    "clean_pod_policy": "has no effect on a TrainJob: its JobSet keeps the finished pods until the TrainJob is deleted",
}
#: Kueue's name for this kind (integrations.frameworks in its Configuration), v0.17.0.
KUEUE_FRAMEWORK = "trainer.kubeflow.org/trainjob"
#: Who owns our spec.runtimePatches entry (a domain-prefixed path, as the API asks).
PATCH_MANAGER = "kubetrain.dev/launch"
#: The cluster-wide runtime (k8s/trainjob/clustertrainingruntime.yaml) and its budget.
CLUSTER_RUNTIME = "kubetrain"
CLUSTER_RUNTIME_KIND = "ClusterTrainingRuntime"
CLUSTER_RUNTIME_MAX_RESTARTS = 3
#: The cluster runtime's pod grace period (k8s/trainjob/clustertrainingruntime.yaml).
CLUSTER_RUNTIME_GRACE_SECONDS = 30
RUNTIME_KIND, RUNTIME_PLURAL = "TrainingRuntime", "trainingruntimes"
#: The JobSet a TrainJob runs as (same name): its status counts the restarts spent.
JOBSET_GROUP, JOBSET_VERSION, JOBSET_PLURAL = "jobset.x-k8s.io", "v1alpha2", "jobsets"
#: The object whose status counts the job's restarts (`restarts`): its JobSet, (group, version, plural).
RESTART_RECORD: tuple[str, str, str] | None = (JOBSET_GROUP, JOBSET_VERSION, JOBSET_PLURAL)
#: Every custom kind this backend creates: kind -> (group, version, plural).
CUSTOM_KINDS = {KIND: (GROUP, VERSION, PLURAL), RUNTIME_KIND: (GROUP, VERSION, RUNTIME_PLURAL)}
#: The PodGroup plugin of the runtime per --gang (the Trainer makes the PodGroup and sets the scheduler).
GANG_POLICIES: dict[str, dict[str, Any]] = {"volcano": {"volcano": {}}, "scheduler-plugins": {"coscheduling": {}}}
SUBMITTER_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": [GROUP], "resources": [PLURAL, RUNTIME_PLURAL], "verbs": ["create", "get", "list", "delete", "patch"]},
    # As for PyTorchJob: what the run creates names the TrainJob as owner with blockOwnerDeletion.
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
)
#: Pod spec fields a runtimePatches entry may set (PodSpecPatch, v2.3.0) that `launch` renders.
_PATCHABLE_POD = ("terminationGracePeriodSeconds", "securityContext", "serviceAccountName", "affinity",
                  "tolerations", "nodeSelector", "volumes")
#: Pod spec fields that only a runtime can set: their presence asks for a TrainingRuntime of the job's own.
_RUNTIME_ONLY_POD = ("priorityClassName", "schedulerName")


def needs_own_runtime(spec: JobShape, pod: Pod) -> bool:
    """Whether the job needs what a TrainJob cannot patch: another budget, priority, scheduler, Secret env."""
    return (spec.max_restarts != CLUSTER_RUNTIME_MAX_RESTARTS or bool(spec.gang)
            or any(k in pod.template["spec"] for k in _RUNTIME_ONLY_POD) or bool(pod.container.get("envFrom"))
            or _queued_with_own_grace(spec, pod))


def _queued_with_own_grace(spec: JobShape, pod: Pod) -> bool:
    """A queued job whose grace period is not the cluster runtime's.

    Kueue v0.17 unsuspends a TrainJob by updating it through Trainer v2.2.0's Go types, which have no
    PodSpecPatch.terminationGracePeriodSeconds: the update drops it from our runtimePatches entry
    (seen in the node tier), and the pods would get the runtime's grace period, not the one torchrun's
    shutdown timeout was set from. A runtime of the job's own keeps it.
    """
    grace = pod.template["spec"].get("terminationGracePeriodSeconds")
    return bool(spec.queue) and grace is not None and grace != CLUSTER_RUNTIME_GRACE_SECONDS


def failure_policy(max_restarts: int) -> dict[str, Any]:
    """The JobSet's: a Job failed by a 1-127 exit fails the job; any other failed Job restarts every node."""
    return {"maxRestarts": max_restarts, "restartStrategy": "BlockingRecreate", "rules": [
        {"name": "PermanentExitCode", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]},
        {"name": "RetryableFailure", "action": "RestartJobSet", "onJobFailureReasons": ["BackoffLimitExceeded"]}]}


def pod_failure_policy() -> dict[str, Any]:
    """The Job's: 143 and disruptions are not counted, 1-127 fail the Job, anything else counts (backoffLimit 0)."""
    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "Ignore", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                             "values": [int(contract.ExitCode.PREEMPTED)]}},
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                              "values": list(range(1, 128))}}]}


def render_runtime(spec: JobShape, *, metadata: dict[str, Any], pod: Pod) -> dict[str, Any]:
    """The job's own TrainingRuntime: the cluster runtime's policy, with this job's budget and whole pod."""
    template = copy.deepcopy(pod.template)
    (c,) = template["spec"]["containers"]
    c["name"] = CONTAINER
    c["command"] = list(RUNTIME_COMMAND)  # the TrainJob's trainer.args add the script
    template["spec"]["restartPolicy"] = "Never"  # podFailurePolicy needs it: the Job decides on each exit
    runtime_spec: dict[str, Any] = {
        "mlPolicy": {"numNodes": spec.nodes, "torch": {}},
        "template": {"spec": {"failurePolicy": failure_policy(spec.max_restarts), "replicatedJobs": [{
            "name": TRAINER_JOB,
            "template": {"metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                         "spec": {"backoffLimit": 0, "podFailurePolicy": pod_failure_policy(), "template": template}}}]}}}
    if spec.gang:
        runtime_spec["podGroupPolicy"] = copy.deepcopy(GANG_POLICIES[spec.gang])
    meta = copy.deepcopy(metadata)
    meta["labels"]["trainer.kubeflow.org/framework"] = "torch"
    return {"apiVersion": API_VERSION, "kind": RUNTIME_KIND, "metadata": meta, "spec": runtime_spec}


def companions(spec: JobShape, *, metadata: dict[str, Any], pod: Pod) -> list[dict[str, Any]]:
    """Objects the TrainJob needs before it is created: its own TrainingRuntime, when it needs one."""
    return [render_runtime(spec, metadata=metadata, pod=pod)] if needs_own_runtime(spec, pod) else []


def render(spec: JobShape, *, metadata: dict[str, Any], pod: Pod) -> dict[str, Any]:
    """The TrainJob of a JobSpec: trainer fields, and the rest of the pod as our runtimePatches entry."""
    if spec.elastic:
        from launcher.errors import SpecError

        raise SpecError("--nodes MIN:MAX: a TrainJob on the kubetrain runtime has a fixed size; "
                        "use --backend pytorchjob for an elastic job")
    c = pod.container
    trainer: dict[str, Any] = {"numNodes": spec.nodes, "numProcPerNode": spec.nproc_per_node, "image": c["image"],
                               "args": list(pod.script), "env": copy.deepcopy(c["env"])}
    if c.get("resources"):
        trainer["resourcesPerNode"] = copy.deepcopy(c["resources"])
    pod_spec = {k: copy.deepcopy(v) for k, v in pod.template["spec"].items() if k in _PATCHABLE_POD}
    pod_spec["containers"] = [{"name": CONTAINER, **{k: copy.deepcopy(c[k]) for k in ("volumeMounts", "securityContext")
                                                     if k in c}}]
    own = needs_own_runtime(spec, pod)
    job_spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": RUNTIME_KIND if own else CLUSTER_RUNTIME_KIND,
                       "name": metadata["name"] if own else CLUSTER_RUNTIME},
        "trainer": trainer,
        "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
            {"name": TRAINER_JOB, "template": {"spec": {"template": {
                "metadata": copy.deepcopy(pod.template.get("metadata") or {}), "spec": pod_spec}}}}]}}}}],
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": job_spec}


def _spec(job: dict) -> dict:
    return job.get("spec") or {}


def _trainer(job: dict) -> dict:
    return _spec(job).get("trainer") or {}


def _pod_patch(job: dict) -> dict:
    for patch in _spec(job).get("runtimePatches") or []:
        if patch.get("manager") != PATCH_MANAGER:
            continue
        for rj in ((((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {})
                   .get("replicatedJobs") or []):
            if rj.get("name") == TRAINER_JOB:
                return ((rj.get("template") or {}).get("spec") or {}).get("template") or {}
    return {}


def state(job: dict) -> str:
    """Succeeded (Complete), Failed, Running (a Job active), else the newest true condition, else Pending."""
    status = job.get("status") or {}
    true = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    for c in true:
        if c.get("type") in ("Complete", "Failed"):
            return "Succeeded" if c["type"] == "Complete" else "Failed"
    if any((j.get("active") or 0) > 0 for j in status.get("jobsStatus") or []):
        return "Running"
    return true[-1]["type"] if true else "Pending"


def pod_templates(job: dict) -> list[dict]:
    """The trainer pod as the TrainJob sets it (patch and trainer fields): the one pod template there is."""
    patch = copy.deepcopy(_pod_patch(job))
    t = _trainer(job)
    pod_spec = patch.setdefault("spec", {})
    containers = pod_spec.get("containers") or [{"name": CONTAINER}]
    for c in containers:
        if c.get("name") == CONTAINER:
            c.update({"image": t.get("image"), "command": [*RUNTIME_COMMAND, *(t.get("args") or [])],
                      "env": t.get("env") or [], "resources": t.get("resourcesPerNode") or {}})
    pod_spec["containers"] = containers
    return [patch]


def add_env(job: dict, env: list[dict]) -> None:
    """Append env to the trainer's (a schedule's warm start)."""
    t = _spec(job).setdefault("trainer", {})
    t["env"] = (t.get("env") or []) + copy.deepcopy(env)


def replica_names(job: dict) -> set[str]:
    """The pod name prefix of each node (<job>-node-0-<rank>): the Job controller adds a random suffix."""
    name = job["metadata"]["name"]
    return {f"{name}-{TRAINER_JOB}-0-{i}" for i in range(expected_pods(job))}


def replica_id(labels: Mapping[str, str]) -> str:
    """`node-3`: the replicated Job and the pod's completion index (its node rank)."""
    return f"{labels.get(REPLICATED_JOB_LABEL, TRAINER_JOB)}-{labels.get(COMPLETION_INDEX_LABEL, '?')}"


def expected_pods(job: dict) -> int:
    return int(_trainer(job).get("numNodes") or 1)


def min_pods(job: dict) -> int:
    return expected_pods(job)  # no elastic TrainJobs: every node is needed


def retry_limit(job: dict) -> int | None:
    """The restarts the JobSet allows: the runtime's maxRestarts, which launch also passes the runtime as env."""
    for e in _trainer(job).get("env") or []:
        if e.get("name") == contract.ENV_MAX_RESTARTS:
            try:
                return int(e.get("value"))
            except (TypeError, ValueError):
                return None
    return None


def suspended(job: dict) -> bool:
    """spec.suspend: set by Kueue's webhook on create (never by launch), cleared on admission."""
    return bool(_spec(job).get("suspend"))


def podsets(job: dict) -> list[int]:
    """Pods of each pod set as Kueue counts them: one per replicated Job of the runtime, ours has one."""
    return [expected_pods(job)]


def deadline(job: dict) -> tuple[float | None, str | None]:
    """(spec.activeDeadlineSeconds, None): the Trainer enforces it itself, no start time to nudge from."""
    return _spec(job).get("activeDeadlineSeconds"), None


def exit_event(event: dict) -> tuple[str, int] | None:
    """None: neither the Trainer nor JobSet records a container's exit as an event (pods' statuses do)."""
    return None


def restarts(jobset: dict | None) -> tuple[int, int] | None:
    """(restarts, those counted toward maxRestarts) from the JobSet's status; None without a JobSet."""
    if not jobset:
        return None
    status = jobset.get("status") or {}
    return int(status.get("restarts") or 0), int(status.get("restartsCountTowardsMax") or 0)
