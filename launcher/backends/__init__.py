"""The training operators a job runs under: one module each, chosen here.

Everything that depends on the operator's job kind lives in its module, so a second
one (Kubeflow Trainer v2's TrainJob) is a new module listed in BACKENDS, not edits
across the launcher. A backend module has:

    KIND, API_VERSION, GROUP, VERSION, PLURAL, CRD_NAME   the custom resource
    CRD_MISSING            the fix to print when the cluster lacks the CRD
    POD_JOB_LABEL          the label its controller sets on a job's pods (value: the job name)
    SUBMITTER_RULES        the RBAC rules a schedule's in-cluster submitter needs on the kind
    render(spec, *, metadata, pod_template) -> dict        the job object
    state(job) -> str      "Succeeded", "Failed", or the newest other condition ("Pending" without one)
    pod_templates(job)     the job's pod templates, the one whose log tells progress first
    replica_names(job)     every pod name the job's spec asks for
    replica_id(labels)     a pod's replica, from its labels: "master-0", "worker-3"
    expected_pods(job), min_pods(job), retry_limit(job), deadline(job)
    exit_event(event)      (pod name, exit code) of the controller's "a container exited" event, or None

Modules here are pure (no kubernetes import, no I/O); launcher/k8s/ does the talking.
"""

from __future__ import annotations

from types import ModuleType

from launcher.backends import pytorchjob

#: --backend NAME -> its module.
BACKENDS: dict[str, ModuleType] = {"pytorchjob": pytorchjob}
DEFAULT = pytorchjob
BY_KIND: dict[str, ModuleType] = {b.KIND: b for b in BACKENDS.values()}
#: The states a job does not leave.
FINISHED = ("Succeeded", "Failed")


def of(job: dict) -> ModuleType:
    """The backend of a job object, by its kind (DEFAULT for a partial object without one)."""
    return BY_KIND.get(job.get("kind"), DEFAULT)
