"""The job spec: what the user asked for, validated, before anything is rendered.

Frozen, keyword-only dataclasses; `__post_init__` raises `SpecError` naming
the field, the value and the flag that fixes it. No I/O here.
"""

from __future__ import annotations

import math

import dataclasses
import re

from launcher.errors import SpecError
from trainer import contract

#: Kubernetes quantity, e.g. 500m, 2, 1.5Gi, 64G.
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
#: RFC 1123 label (names of Secrets, PVCs, namespaces, priority classes).
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: An extended resource name such as nvidia.com/gpu or nvidia.com/mig-1g.10gb.
_RESOURCE_RE = re.compile(r"^[a-z0-9.-]+/[A-Za-z0-9._-]+$")

#: The runtime image `launch` runs unless told otherwise (--image, KUBETRAIN_IMAGE, project config).
DEFAULT_IMAGE = "kubetrain/runtime:0.1.0"  # built from images/Dockerfile
GPU_RESOURCE = "nvidia.com/gpu"
SPOT_MODES = ("prefer", "require")
GANG_SCHEDULERS = ("volcano", "scheduler-plugins")
CLEAN_POD_POLICIES = ("None", "Running", "All")


def check_quantity(value: str, flag: str) -> str:
    if not isinstance(value, str) or not _QUANTITY_RE.match(value):
        raise SpecError(f"{flag} {value!r} is not a Kubernetes quantity (e.g. 8, 500m, 32Gi)")
    return value


def check_dns_label(value: str, flag: str, *, max_len: int = 63) -> str:
    if not isinstance(value, str) or len(value) > max_len or not _DNS_LABEL_RE.match(value):
        raise SpecError(f"{flag} {value!r} must be lower-case letters, digits and '-', at most {max_len} characters")
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Volume:
    """A PersistentVolumeClaim mounted into every replica (--pvc NAME:/PATH[:ro])."""

    claim: str
    mount_path: str
    read_only: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.claim, str) or len(self.claim) > 253 or not _DNS_SUBDOMAIN_RE.match(self.claim):
            raise SpecError(f"--pvc claim name {self.claim!r} is not a valid PVC name")
        if not isinstance(self.mount_path, str) or not self.mount_path.startswith("/") or ":" in self.mount_path:
            raise SpecError(f"--pvc mount path {self.mount_path!r} must be an absolute path")
        if self.mount_path.rstrip("/") in ("", "/dev/shm", contract.CODE_MOUNT_PATH):
            raise SpecError(f"--pvc mount path {self.mount_path!r} is reserved")

    @classmethod
    def parse(cls, text: str) -> "Volume":
        parts = str(text).split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise SpecError(f"--pvc {text!r}: expected NAME:/PATH or NAME:/PATH:ro")
        return cls(claim=parts[0], mount_path=parts[1], read_only=len(parts) == 3 and parts[2] == "ro")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resources:
    """Per replica (pod): accelerators, CPU, memory, shared memory."""

    gpus_per_node: int = 0
    gpu_resource: str = GPU_RESOURCE
    gpu_type: str | None = None
    cpu: str | None = None
    memory: str | None = None
    shm: str = "2Gi"

    def __post_init__(self) -> None:
        if not isinstance(self.gpus_per_node, int) or self.gpus_per_node < 0:
            raise SpecError(f"--gpus-per-node must be >= 0, got {self.gpus_per_node!r}")
        if not _RESOURCE_RE.match(str(self.gpu_resource)):
            raise SpecError(f"--gpu-resource {self.gpu_resource!r} is not an extended resource name "
                            "(e.g. nvidia.com/gpu, nvidia.com/mig-1g.10gb)")
        if self.gpu_type is not None and not re.match(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$",
                                                      str(self.gpu_type)):
            raise SpecError(f"--gpu-type {self.gpu_type!r} is not a valid label value (e.g. NVIDIA-A100-SXM4-80GB)")
        if self.cpu is not None:
            check_quantity(self.cpu, "--cpu")
        if self.memory is not None:
            check_quantity(self.memory, "--memory")
        check_quantity(self.shm, "--shm")


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One distributed training job: `launch train.py ...` after flags, config and env were merged."""

    script: str
    script_args: tuple[str, ...] = ()
    image: str | None = None
    namespace: str = "default"
    nodes: int = 1
    #: Elastic range (--nodes MIN:MAX); None for a fixed-size job.
    min_nodes: int | None = None
    nproc_per_node: int = 1
    resources: Resources = dataclasses.field(default_factory=Resources)
    checkpoint_uri: str | None = None
    checkpoint_every_steps: int = contract.DEFAULT_CHECKPOINT_EVERY_STEPS
    grace_seconds: float = contract.DEFAULT_GRACE_SECONDS
    hang_timeout: float = contract.DEFAULT_HANG_TIMEOUT
    #: Lost ranks restarted by the pod's own runtime before the pod is replaced (--in-place-restarts; 0: off).
    in_place_restarts: int = contract.DEFAULT_IN_PLACE_RESTARTS
    #: The runtime's Prometheus /metrics port (--metrics-port; 0: not served, no container port).
    metrics_port: int = 0
    spot: str | None = None
    priority_class: str | None = None
    gang: str | None = None
    max_restarts: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = 7 * 24 * 3600
    clean_pod_policy: str = "Running"
    volumes: tuple[Volume, ...] = ()
    secret_env: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    service_account: str | None = None
    #: Kueue: the LocalQueue the job waits in (--queue), and its WorkloadPriorityClass (--priority).
    queue: str | None = None
    workload_priority: str | None = None

    def __post_init__(self) -> None:
        if not self.script or not isinstance(self.script, str):
            raise SpecError("no training script given: launch SCRIPT [flags]")
        if not isinstance(self.nodes, int) or self.nodes < 1:
            raise SpecError(f"--nodes must be >= 1, got {self.nodes!r}")
        if self.min_nodes is not None and not (isinstance(self.min_nodes, int) and 1 <= self.min_nodes <= self.nodes):
            raise SpecError(f"--nodes MIN:MAX needs 1 <= MIN <= MAX, got {self.min_nodes}:{self.nodes}")
        if not isinstance(self.nproc_per_node, int) or self.nproc_per_node < 1:
            raise SpecError(f"--nproc must be >= 1, got {self.nproc_per_node!r}")
        g = self.resources.gpus_per_node
        if g and self.nproc_per_node != g:
            raise SpecError(f"--nproc {self.nproc_per_node} differs from the {g} GPUs per node; one rank per GPU "
                            "(drop --nproc)")
        check_dns_label(self.namespace, "--namespace")
        if self.image is not None and (not isinstance(self.image, str) or not self.image or " " in self.image):
            raise SpecError(f"--image {self.image!r} is not an image reference")
        if not isinstance(self.checkpoint_every_steps, int) or self.checkpoint_every_steps < 0:
            raise SpecError(f"--checkpoint-every-steps must be >= 0, got {self.checkpoint_every_steps!r}")
        if not isinstance(self.grace_seconds, (int, float)) or not (
                contract.SUPERVISOR_GRACE_RESERVE + 1 <= self.grace_seconds <= 3600):
            raise SpecError(f"--grace-seconds must be between {contract.SUPERVISOR_GRACE_RESERVE + 1:.0f} and 3600, "
                            f"got {self.grace_seconds!r}")
        if not isinstance(self.hang_timeout, (int, float)) or not self.hang_timeout >= 0:
            raise SpecError(f"--hang-timeout must be >= 0, got {self.hang_timeout!r}")
        if not isinstance(self.in_place_restarts, int) or self.in_place_restarts < 0:
            raise SpecError(f"--in-place-restarts must be >= 0, got {self.in_place_restarts!r}")
        if not isinstance(self.metrics_port, int) or not 0 <= self.metrics_port <= 65535:
            raise SpecError(f"--metrics-port must be a port (1-65535) or 0 (off), got {self.metrics_port!r}")
        if self.spot is not None and self.spot not in SPOT_MODES:
            raise SpecError(f"--spot {self.spot!r}: choose prefer or require")
        if self.gang is not None and self.gang not in GANG_SCHEDULERS:
            raise SpecError(f"--gang {self.gang!r}: choose {' or '.join(GANG_SCHEDULERS)}")
        if self.priority_class is not None:
            check_dns_label(self.priority_class, "--priority-class", max_len=253)
        if self.queue is not None:
            check_dns_label(self.queue, "--queue")  # a label value: 63 characters at most
            if self.gang:
                raise SpecError(f"--queue with --gang {self.gang}: Kueue admits all of a job's pods or none already; "
                                "drop --gang")
        if self.workload_priority is not None:
            if self.queue is None:
                raise SpecError(f"--priority {self.workload_priority} is a Kueue WorkloadPriorityClass and needs "
                                "--queue; for a Kubernetes PriorityClass use --priority-class")
            check_dns_label(self.workload_priority, "--priority")
        if self.service_account is not None:
            check_dns_label(self.service_account, "--service-account", max_len=253)
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise SpecError(f"--max-restarts must be >= 0, got {self.max_restarts!r}")
        for name, value in (("--max-runtime", self.active_deadline_seconds), ("--ttl", self.ttl_seconds_after_finished)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SpecError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.clean_pod_policy not in CLEAN_POD_POLICIES:
            raise SpecError(f"--clean-pod-policy {self.clean_pod_policy!r}: choose one of {', '.join(CLEAN_POD_POLICIES)}")
        for s in self.secret_env:
            check_dns_label(s, "--secret-env", max_len=253)
        uri = self.checkpoint_uri
        if not uri:
            raise SpecError("a cluster job needs --checkpoint URI (s3://..., gs://..., or a folder on a --pvc): "
                            "without it a restarted pod cannot resume")
        problem = contract.checkpoint_uri_problem(uri)  # the runtime's own rule: the pod would exit 2 on it
        if problem:
            raise SpecError(problem)
        if contract.is_local_uri(uri):
            path = uri[len("file://"):] if uri.startswith("file://") else uri
            if not any(path == v.mount_path or path.startswith(v.mount_path.rstrip("/") + "/")
                       for v in self.volumes if not v.read_only):
                raise SpecError(f"--checkpoint {uri!r} is a local path: it must be on a writable --pvc mount, "
                                "or use an object store URI (s3://, gs://)")
        paths = [v.mount_path for v in self.volumes]
        if len(set(paths)) != len(paths):
            raise SpecError(f"--pvc mount paths must differ, got {paths}")
        for k, _ in self.env:
            if not _ENV_NAME_RE.match(k):
                raise SpecError(f"--env {k!r} is not a valid variable name")
            if k.startswith(contract.ENV_PREFIX) or k in contract.OPERATOR_ENV:
                raise SpecError(f"--env {k} is set by kubetrain or the operator; use the matching launch flag")

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.resources.gpus_per_node

    @property
    def elastic(self) -> bool:
        return self.min_nodes is not None


def split_gpus(gpus: int, gpus_per_node: int | None) -> tuple[int, int]:
    """(nodes, gpus per node) for `--gpus N [--gpus-per-node M]`; SpecError if they do not divide."""
    if not isinstance(gpus, int) or gpus < 0:
        raise SpecError(f"--gpus must be >= 0, got {gpus!r}")
    if gpus == 0:
        return 1, 0
    per = gpus_per_node if gpus_per_node is not None else min(gpus, 8)
    if not isinstance(per, int) or per < 1:
        raise SpecError(f"--gpus-per-node must be >= 1, got {per!r}")
    if gpus % per:
        raise SpecError(f"--gpus {gpus} is not a multiple of --gpus-per-node {per}; "
                        f"try --gpus {gpus - gpus % per or per} or --gpus-per-node {_largest_divisor(gpus, per)}")
    return gpus // per, per


def split_over_nodes(gpus: int, min_nodes: int | None, nodes: int, gpus_per_node: int | None) -> int:
    """GPUs per pod for `--gpus N --nodes [MIN:]MAX [--gpus-per-node M]` (N is the total at MAX pods).

    SpecError when they do not split, naming values that do: the --gpus that fit, the node
    counts that divide N, or the --gpus-per-node that fits.
    """
    per = gpus_per_node if gpus_per_node is not None else (gpus // nodes if gpus % nodes == 0 else None)
    if per is not None and per * nodes == gpus:
        return per
    lo = min_nodes if min_nodes is not None else 1

    def nodes_flag(n: int) -> str:
        return f"--nodes {min(min_nodes, n)}:{n}" if min_nodes is not None else f"--nodes {n}"

    asked = f"--nodes {min_nodes}:{nodes}" if min_nodes is not None else f"--nodes {nodes}"
    if gpus_per_node is not None:
        fixes = [f"--gpus {gpus_per_node * nodes}"]
        if gpus % gpus_per_node == 0 and gpus // gpus_per_node >= 1:
            fixes.append(nodes_flag(gpus // gpus_per_node))
        if gpus % nodes == 0:
            fixes.append(f"--gpus-per-node {gpus // nodes}")
        return _refuse(f"--gpus {gpus} does not split over {asked} at --gpus-per-node {gpus_per_node} "
                       f"(--gpus is the total at {nodes} pod(s): {nodes} x {gpus_per_node} = {gpus_per_node * nodes})",
                       fixes)
    below, above = gpus - gpus % nodes, gpus - gpus % nodes + nodes
    fits = [g for g in (below, above) if g > 0]
    divisors = [d for d in _divisors(gpus) if d >= lo]
    near = sorted(divisors, key=lambda d: (abs(d - nodes), d))[:3]
    fixes = ["--gpus " + _either([str(g) for g in fits]) + f" (multiples of {nodes})"]
    if near:
        fixes.append("--nodes " + _either([nodes_flag(d)[len("--nodes "):] for d in sorted(near)])
                     + f" (pod counts that divide {gpus})")
    return _refuse(f"--gpus {gpus} does not split over {asked} (--gpus is the total at {nodes} pod(s), "
                   f"so it must be a multiple of {nodes})", fixes)


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _either(values: list[str]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def _refuse(message: str, fixes: list[str]) -> int:
    raise SpecError(f"{message}; try {', or '.join(fixes)}")


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def parse_env(items: list[str]) -> tuple[tuple[str, str], ...]:
    """`--env NAME=VALUE` items → pairs; SpecError names the bad one."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise SpecError(f"--env {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        pairs.append((k, v))
    return tuple(pairs)


def parse_nodes(text: str) -> tuple[int | None, int]:
    """`--nodes N` or `--nodes MIN:MAX` → (min or None, max)."""
    try:
        if ":" in str(text):
            lo, hi = str(text).split(":", 1)
            return int(lo), int(hi)
        return None, int(text)
    except ValueError:
        raise SpecError(f"--nodes {text!r}: expected N or MIN:MAX") from None
