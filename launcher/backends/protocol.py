"""The seam every backend module fills: `Backend`, a typing.Protocol mypy holds each module to.

A backend is a module (launcher/backends/pytorchjob.py, trainjob.py), not a class: pure
constants and functions, dicts in, dicts out. `BACKENDS` in launcher/backends/__init__.py is
typed `dict[str, Backend]`, so mypy checks each module against this protocol
(tests/unit/test_typecheck.py runs it). The render gets the pod in parts (`Pod`): the pod
template with our container whole, and the container's command as the runtime's
entrypoint and the user's script with its arguments, so a backend that sets them apart (a
TrainJob's trainer.args) never takes a command list apart by position.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol

#: The runtime's entrypoint in our container: the user's script and its arguments follow.
RUNTIME_COMMAND: tuple[str, ...] = ("python", "-m", "trainer", "run")


@dataclasses.dataclass(frozen=True)
class Pod:
    """The rendered pod of a job, in parts."""

    template: dict[str, Any]  # {"metadata", "spec"}: one container, ours, whose command is `command`
    script: tuple[str, ...]  # the user's script and its arguments (after RUNTIME_COMMAND)

    @property
    def container(self) -> dict[str, Any]:
        (c,) = self.template["spec"]["containers"]
        return c

    @property
    def command(self) -> list[str]:
        return [*RUNTIME_COMMAND, *self.script]


class JobShape(Protocol):
    """What a backend reads of a job's spec (launcher/job/spec.py's JobSpec has it)."""

    @property
    def nodes(self) -> int: ...
    @property
    def min_nodes(self) -> int | None: ...
    @property
    def nproc_per_node(self) -> int: ...
    @property
    def elastic(self) -> bool: ...
    @property
    def max_restarts(self) -> int: ...
    @property
    def clean_pod_policy(self) -> str: ...
    @property
    def active_deadline_seconds(self) -> int | None: ...
    @property
    def ttl_seconds_after_finished(self) -> int | None: ...
    @property
    def gang(self) -> str | None: ...
    @property
    def priority_class(self) -> str | None: ...
    @property
    def queue(self) -> str | None: ...


class Backend(Protocol):
    """A training operator's job kind, as launch creates and reads it."""

    # The custom resource, and every custom kind the backend creates: kind -> (group, version, plural).
    KIND: str
    API_VERSION: str
    GROUP: str
    VERSION: str
    PLURAL: str
    CRD_NAME: str
    CUSTOM_KINDS: dict[str, tuple[str, str, str]]
    CRD_MISSING: str  # the fix to print when the cluster lacks the CRD
    CONTAINER: str  # our container's name in the job's pods (status and logs read it)
    POD_JOB_LABEL: str  # the label its controller sets on a job's pods (value: the job name)
    OWNS_PODS: bool  # the job object is its pods' controller (else they are found by label alone)
    SUBMITTER_RULES: tuple[dict[str, Any], ...]  # RBAC rules a schedule's in-cluster submitter needs
    FIRST_REPLICA: str  # the rank-0 pod's replica id (`launch chaos --kill-pod master`)
    IGNORED_FLAGS: dict[str, str]  # launch flags (argparse dest) the kind cannot honour -> why
    KUEUE_FRAMEWORK: str  # Kueue's integration name for the kind (launch --queue)
    #: (group, version, plural) of the object whose status counts its restarts (`restarts`); None: the pods do
    RESTART_RECORD: tuple[str, str, str] | None

    def render(self, spec: JobShape, *, metadata: dict[str, Any], pod: Pod) -> dict[str, Any]:
        """The job object."""
        ...

    def companions(self, spec: JobShape, *, metadata: dict[str, Any], pod: Pod) -> list[dict[str, Any]]:
        """Objects created before the job, owned by it after (a TrainJob's own runtime)."""
        ...

    def add_env(self, job: dict, env: list[dict]) -> None:
        """Append env entries to our container (a schedule's warm start)."""
        ...

    def state(self, job: dict) -> str:
        """Succeeded, Failed, or the newest other condition (Pending without one)."""
        ...

    def pod_templates(self, job: dict) -> list[dict]:
        """The job's pod templates, the one whose log tells progress first."""
        ...

    def replica_names(self, job: dict) -> set[str]:
        """Every pod name (or name prefix) the job's spec asks for."""
        ...

    def replica_id(self, labels: Mapping[str, str]) -> str:
        """A pod's replica from its labels: master-0, worker-3, node-1."""
        ...

    def expected_pods(self, job: dict) -> int: ...

    def min_pods(self, job: dict) -> int: ...

    def retry_limit(self, job: dict) -> int | None: ...

    def deadline(self, job: dict) -> tuple[float | None, str | None]:
        """(active deadline seconds, start time as RFC 3339), each None when not set."""
        ...

    def suspended(self, job: dict) -> bool:
        """Whether the job is suspended (Kueue's webhook sets it; launch never does)."""
        ...

    def podsets(self, job: dict) -> list[int]:
        """Pods of each pod set, as Kueue makes its Workload of the job."""
        ...

    def exit_event(self, event: dict) -> tuple[str, int] | None:
        """(pod name, exit code) of the controller's "a container exited" event, or None."""
        ...

    def restarts(self, record: dict | None) -> tuple[int, int] | None:
        """(restarts, those counted toward the budget) from RESTART_RECORD's object; None without one."""
        ...
