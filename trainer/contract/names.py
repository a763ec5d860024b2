"""What the launcher sets in a pod: the container, the KUBETRAIN_* variables, labels, defaults."""

from __future__ import annotations

# --- container ---------------------------------------------------------------

#: The Kubeflow training operator only injects MASTER_ADDR & co. into this one.
CONTAINER_NAME = "pytorch"

# --- environment: one KUBETRAIN_* variable per `python -m trainer run` flag ---

ENV_PREFIX = "KUBETRAIN_"
ENV_NPROC_PER_NODE = "KUBETRAIN_NPROC_PER_NODE"
ENV_CHECKPOINT_URI = "KUBETRAIN_CHECKPOINT_URI"
ENV_RUN_ID = "KUBETRAIN_RUN_ID"
ENV_CHECKPOINT_EVERY_STEPS = "KUBETRAIN_CHECKPOINT_EVERY_STEPS"
ENV_CHECKPOINT_EVERY_SECONDS = "KUBETRAIN_CHECKPOINT_EVERY_SECONDS"
ENV_CHECKPOINT_KEEP = "KUBETRAIN_CHECKPOINT_KEEP"
ENV_GRACE_SECONDS = "KUBETRAIN_GRACE_SECONDS"
ENV_HANG_TIMEOUT = "KUBETRAIN_HANG_TIMEOUT"
ENV_PREEMPTION_URL = "KUBETRAIN_PREEMPTION_URL"
ENV_PREEMPTION_POLL_SECONDS = "KUBETRAIN_PREEMPTION_POLL_SECONDS"
ENV_SPOOL_DIR = "KUBETRAIN_SPOOL_DIR"
#: The supervisor's Prometheus /metrics port (trainer/metrics/); 0 or unset: not served. `launch
#: --metrics-port` sets it and renders it as the container's port METRICS_PORT_NAME.
ENV_METRICS_PORT = "KUBETRAIN_METRICS_PORT"
METRICS_PORT_NAME = "metrics"
#: Seconds restore keeps retrying a checkpoint it could not read because of a storage error
#: (not a verified corrupt one) before the run exits INFRA with `latest` untouched.
ENV_STORAGE_TIMEOUT = "KUBETRAIN_STORAGE_TIMEOUT"
#: Seconds between two progress posts to the Trainer's TrainJob status endpoint (at least
#: TRAINJOB_STATUS_MIN_SECONDS; 0: never post). Read only where the TRAINER_STATUS_* variables are set.
ENV_TRAINJOB_STATUS_SECONDS = "KUBETRAIN_TRAINJOB_STATUS_SECONDS"
DEFAULT_TRAINJOB_STATUS_SECONDS = 10.0
TRAINJOB_STATUS_MIN_SECONDS = 1.0
#: Restarts in a row without a newly committed step before the run stops for good (exit CRASH_LOOP).
#: `launch --max-restarts` sets it from the same number as the PyTorchJob's backoffLimit.
ENV_MAX_RESTARTS = "KUBETRAIN_MAX_RESTARTS"
#: Times one supervisor may start its ranks again itself (a fresh torchrun in the same pod) after a
#: rank was lost, before it exits retryably for the cluster to replace the pod. `launch
#: --in-place-restarts` sets it; unset or 0: every such failure replaces the pod.
ENV_IN_PLACE_RESTARTS = "KUBETRAIN_IN_PLACE_RESTARTS"
#: "1": an in-place restart starts its ranks cold, without the warm spare (trainer/supervisor/spare.py).
ENV_COLD_IN_PLACE_RESTARTS = "KUBETRAIN_COLD_IN_PLACE_RESTARTS"
#: A code bundle (tar.gz; a path or fsspec URI) to unpack and run from, and its sha256.
ENV_CODE_URI = "KUBETRAIN_CODE_URI"
ENV_CODE_SHA256 = "KUBETRAIN_CODE_SHA256"
#: Where the bundle is unpacked (default: a fresh temp dir).
ENV_WORKDIR = "KUBETRAIN_WORKDIR"
#: Set by the supervisor for its workers. Given to the supervisor itself (by `launch chaos`),
#: it uses that folder rather than a temp one, so a caller can watch the ranks' progress.
ENV_CONTROL_DIR = "KUBETRAIN_CONTROL_DIR"
#: Set by the supervisor for its workers: the folder where it prefetches the newest
#: checkpoint's replicated state while they start (trainer/checkpoint/prefetch.py).
ENV_PREFETCH_DIR = "KUBETRAIN_PREFETCH_DIR"
#: The node copy of the newest committed step (trainer/checkpoint/node_copy.py): its folder, its bound.
ENV_NODE_COPY_DIR = "KUBETRAIN_NODE_COPY_DIR"
ENV_NODE_COPY_MAX_BYTES = "KUBETRAIN_NODE_COPY_MAX_BYTES"
#: Fault injection for `launch chaos`: a folder whose files make the runtime misbehave on
#: purpose (FAULT_* below). Unset in production; read only when set.
ENV_FAULTS_DIR = "KUBETRAIN_FAULTS_DIR"
#: Initialise a run that has no checkpoint of its own from another run's newest committed
#: step: a run folder URI, or WARM_START_LATEST (the previous run of the same schedule).
ENV_WARM_START_FROM = "KUBETRAIN_WARM_START_FROM"
#: "1": restore the optimizer too on a warm start (default: weights only, a fresh optimizer).
ENV_WARM_START_OPTIMIZER = "KUBETRAIN_WARM_START_OPTIMIZER"
WARM_START_LATEST = "latest"
#: Who writes the run folder (its writer lease, trainer/writer_lease.py): the same value in every pod
#: and every restart of one job (e.g. NAMESPACE/JOB), different for any other job, so a job's restart
#: or its other nodes are never refused and another job is. Unset: the runtime derives one.
ENV_WRITER_ID = "KUBETRAIN_WRITER_ID"
# The in-cluster submitter of a schedule (`python -m launcher.submit`, run by its CronJob).
ENV_SCHEDULE = "KUBETRAIN_SCHEDULE"  # which schedule's stored spec to submit
ENV_RUN_NAME = "KUBETRAIN_RUN_NAME"  # the run's name: its Job's name, through the downward API
ENV_SUBMIT_POLL_SECONDS = "KUBETRAIN_SUBMIT_POLL_SECONDS"
# Launcher-side settings (launch flags / project config), read by the launcher only.
ENV_IMAGE = "KUBETRAIN_IMAGE"
ENV_NAMESPACE = "KUBETRAIN_NAMESPACE"

# Set by the Kubeflow training operator in every replica (read, never written); the PET_MASTER_*
# pair by Kubeflow Trainer v2's Torch plugin instead of MASTER_*.
OPERATOR_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
)

#: Set by Kubeflow Trainer v2.3's TrainJobStatus plugin (feature gate TrainJobStatus) in every
#: trainer container (read, never written; pkg/runtime/framework/plugins/trainjobstatus): the
#: HTTPS URL of the TrainJob's status endpoint, the path of its CA certificate, and the path of
#: a projected service account token for it (audience = the endpoint; it rotates: read it per use).
TRAINER_STATUS_URL_ENV = "KUBEFLOW_TRAINER_SERVER_URL"
TRAINER_STATUS_CA_ENV = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
TRAINER_STATUS_TOKEN_ENV = "KUBEFLOW_TRAINER_SERVER_TOKEN"
TRAINER_STATUS_ENV = (TRAINER_STATUS_URL_ENV, TRAINER_STATUS_CA_ENV, TRAINER_STATUS_TOKEN_ENV)


def operator_node_rank(env) -> int:
    """This pod's node rank from the operator's env (PET_NODE_RANK, else RANK when MASTER_ADDR is set); 0 if none."""
    try:
        return int(env.get("PET_NODE_RANK") or (env.get("RANK") if env.get("MASTER_ADDR") else 0) or 0)
    except ValueError:
        return 0


# --- labels and names on the cluster -------------------------------------------------

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubetrain"
LABEL_JOB = "kubetrain.dev/job"
#: Every object of a schedule, and every run it started.
LABEL_SCHEDULE = "kubetrain.dev/schedule"
#: Set by the Job controller on a Job's pods (Kubernetes >= 1.27).
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
#: Set by the Kubeflow training operator on every pod of a job.
OPERATOR_JOB_NAME_LABEL = "training.kubeflow.org/job-name"
OPERATOR_REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
OPERATOR_REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
#: Where a ConfigMap code bundle is mounted in the pod.
CODE_MOUNT_PATH = "/kubetrain/code"
CODE_BUNDLE_NAME = "code.tar.gz"

# --- defaults: the one place each lives ----------------------------------------

DEFAULT_GRACE_SECONDS = 30.0
DEFAULT_CHECKPOINT_EVERY_STEPS = 100
DEFAULT_CHECKPOINT_KEEP = 3
DEFAULT_HANG_TIMEOUT = 0.0  # seconds without step progress; 0 disables the watchdog
#: Off by default: a lost rank exits for the cluster to replace the pod, as before in-place restarts.
DEFAULT_IN_PLACE_RESTARTS = 0
DEFAULT_PREEMPTION_POLL_SECONDS = 5.0
DEFAULT_CHECKPOINT_DIR = "checkpoints"  # local runs, relative to the working dir
#: Long enough to ride out an object store's brownout or a throttling burst; short enough that a
#: real outage gives the pod back to the operator (exit INFRA, retried) instead of holding GPUs.
DEFAULT_STORAGE_TIMEOUT = 300.0
#: The node copy's bound where it is on (node_copy_bound). 8 GiB holds the state of the single-node
#: runs in-place restarts are for (a 1B-parameter model's bf16 weights and more) while staying a small
#: share of a node's local disk; a larger state is not kept (restore reads the store) until the flag
#: is raised for a volume sized for it.
DEFAULT_NODE_COPY_MAX_BYTES = 8 << 30


def node_copy_bound(max_bytes: int | None, *, read_back: bool) -> int:
    """The node copy's bound: the one asked for, else DEFAULT_NODE_COPY_MAX_BYTES where something on
    the node reads it back (`read_back`: in-place restarts, or a --node-copy-dir that outlives the pod),
    else 0 (off). Without a reader it is only a second disk write per save, and ephemeral storage a
    pod may be evicted for."""
    if max_bytes is not None:
        return max_bytes
    return DEFAULT_NODE_COPY_MAX_BYTES if read_back else 0

#: Seconds of the grace period kept back for the supervisor itself: after the
#: workers' deadline it still needs to signal torchrun and exit.
SUPERVISOR_GRACE_RESERVE = 2.0


def termination_grace_period_seconds(grace_seconds: float) -> int:
    """The pod's terminationGracePeriodSeconds for a runtime grace budget.

    The kubelet SIGKILLs at exactly this point; the runtime plans to have
    exited `SUPERVISOR_GRACE_RESERVE` seconds earlier, so both derive from one
    number and cannot disagree.
    """
    return int(grace_seconds + 0.999)
