"""The training operators a job runs under: one module each, chosen here.

Everything that depends on the operator's job kind lives in its module, so a second
one (Kubeflow Trainer v2's TrainJob) is a new module listed in BACKENDS, not edits
across the launcher. A backend module has:

    KIND, API_VERSION, GROUP, VERSION, PLURAL, CRD_NAME   the custom resource
    CUSTOM_KINDS           every custom kind it creates: kind -> (group, version, plural)
    CRD_MISSING            the fix to print when the cluster lacks the CRD
    CONTAINER              the name of our container in the job's pods (status, logs read it)
    POD_JOB_LABEL          the label its controller sets on a job's pods (value: the job name)
    OWNS_PODS              whether the job object is its pods' controller (else they are found by label alone)
    SUBMITTER_RULES        the RBAC rules a schedule's in-cluster submitter needs on the kind
    FIRST_REPLICA          the rank-0 pod's replica id (`launch chaos --kill-pod master`)
    IGNORED_FLAGS          launch flags (argparse dest) the kind cannot honour -> why (launch warns)
    render(spec, *, metadata, pod_template) -> dict        the job object
    companions(spec, *, metadata, pod_template) -> [dict]  objects created before the job, owned by it after
    add_env(job, env)      append env entries to our container (a schedule's warm start)
    state(job) -> str      "Succeeded", "Failed", or the newest other condition ("Pending" without one)
    pod_templates(job)     the job's pod templates, the one whose log tells progress first
    replica_names(job)     every pod name the job's spec asks for
    replica_id(labels)     a pod's replica, from its labels: "master-0", "worker-3"
    expected_pods(job), min_pods(job), retry_limit(job), deadline(job)
    KUEUE_FRAMEWORK        Kueue's integration name for the kind (launch --queue)
    suspended(job)         whether the job is suspended (Kueue's webhook sets it; launch never does)
    podsets(job)           pods of each pod set, as Kueue makes its workload of the job
    exit_event(event)      (pod name, exit code) of the controller's "a container exited" event, or None

Modules here are pure (no kubernetes import, no I/O); launcher/k8s/ does the talking.
"""

from __future__ import annotations

from types import ModuleType

from launcher.backends import pytorchjob, trainjob
from launcher.errors import SpecError

#: --backend NAME -> its module. Order: the one `auto` keeps when the cluster serves several.
BACKENDS: dict[str, ModuleType] = {"pytorchjob": pytorchjob, "trainjob": trainjob}
DEFAULT = pytorchjob
DEFAULT_NAME = "pytorchjob"
#: --backend's values: a backend, or `auto`: the one the cluster serves (launcher/k8s/discovery.py).
CHOICES = (*BACKENDS, "auto")
BY_KIND: dict[str, ModuleType] = {b.KIND: b for b in BACKENDS.values()}
#: Every custom kind a backend creates -> (group, version, plural).
CUSTOM_KINDS: dict[str, tuple[str, str, str]] = {k: v for b in BACKENDS.values() for k, v in b.CUSTOM_KINDS.items()}
#: The states a job does not leave.
FINISHED = ("Succeeded", "Failed")


def of(job: dict) -> ModuleType:
    """The backend of a job object, by its kind (DEFAULT for a partial object without one)."""
    return BY_KIND.get(job.get("kind"), DEFAULT)


def check_choice(value: object, source: str = "--backend") -> str:
    """A valid --backend value (or config `backend`), else SpecError naming the choices."""
    if value not in CHOICES:
        raise SpecError(f"{source} {value!r}: choose {', '.join(CHOICES[:-1])} or {CHOICES[-1]}")
    return str(value)


def ignored(backend: ModuleType, given: dict[str, object]) -> list[str]:
    """One warning line per flag the user gave (dest -> value, None when not given) that `backend` cannot honour."""
    return [f"launch: warning: --{dest.replace('_', '-')} {why}" for dest, why in backend.IGNORED_FLAGS.items()
            if given.get(dest) is not None]


def pick(served: set[str], prefer: str | None) -> ModuleType:
    """`auto`: the backend whose CRD the cluster serves (by CRD_NAME); with several, `prefer`, else the first.

    PyTorchJob first: a cluster that has both keeps what its jobs ran under until the config says otherwise.
    """
    have = [b for b in BACKENDS.values() if b.CRD_NAME in served]
    if not have:
        raise SpecError("--backend auto: the cluster serves neither " + " nor ".join(
            b.KIND for b in BACKENDS.values()) + f"; {DEFAULT.CRD_MISSING}, or {trainjob.CRD_MISSING}")
    preferred = BACKENDS.get(prefer or "")
    return preferred if preferred in have else have[0]
