"""The training operators a job runs under: one module each, chosen here.

Everything that depends on the operator's job kind lives in its module, so a second
one (Kubeflow Trainer v2's TrainJob) is a new module listed in BACKENDS, not edits
across the launcher. What a backend module has is `Backend` in launcher/backends/protocol.py:
a typing.Protocol that mypy holds each module to (BACKENDS is typed with it; the unit tier
runs mypy: tests/unit/test_typecheck.py). Modules here are pure (no kubernetes import, no
I/O); launcher/k8s/ does the talking.
"""

from __future__ import annotations

from launcher.backends import pytorchjob, trainjob
from launcher.backends.protocol import Backend
from launcher.errors import SpecError

#: --backend NAME -> its module. Order: the one `auto` keeps when the cluster serves several.
BACKENDS: dict[str, Backend] = {"pytorchjob": pytorchjob, "trainjob": trainjob}
DEFAULT: Backend = pytorchjob
DEFAULT_NAME = "pytorchjob"
#: --backend's values: a backend, or `auto`: the one the cluster serves (launcher/k8s/discovery.py).
CHOICES = (*BACKENDS, "auto")
BY_KIND: dict[str, Backend] = {b.KIND: b for b in BACKENDS.values()}
#: Every custom kind a backend creates -> (group, version, plural).
CUSTOM_KINDS: dict[str, tuple[str, str, str]] = {k: v for b in BACKENDS.values() for k, v in b.CUSTOM_KINDS.items()}
#: The states a job does not leave.
FINISHED = ("Succeeded", "Failed")


def of(job: dict) -> Backend:
    """The backend of a job object, by its kind (DEFAULT for a partial object without one)."""
    return BY_KIND.get(job.get("kind") or "", DEFAULT)


def check_choice(value: object, source: str = "--backend") -> str:
    """A valid --backend value (or config `backend`), else SpecError naming the choices."""
    if value not in CHOICES:
        raise SpecError(f"{source} {value!r}: choose {', '.join(CHOICES[:-1])} or {CHOICES[-1]}")
    return str(value)


def ignored(backend: Backend, given: dict[str, object]) -> list[str]:
    """One warning line per flag the user gave (dest -> value, None when not given) that `backend` cannot honour."""
    return [f"launch: warning: --{dest.replace('_', '-')} {why}" for dest, why in backend.IGNORED_FLAGS.items()
            if given.get(dest) is not None]


def pick(served: set[str], prefer: str | None) -> Backend:
    """`auto`: the backend whose CRD the cluster serves (by CRD_NAME); with several, `prefer`, else the first.

    PyTorchJob first: a cluster that has both keeps what its jobs ran under until the config says otherwise.
    """
    have = [b for b in BACKENDS.values() if b.CRD_NAME in served]
    if not have:
        raise SpecError("--backend auto: the cluster serves neither " + " nor ".join(
            b.KIND for b in BACKENDS.values()) + f"; {DEFAULT.CRD_MISSING}, or {trainjob.CRD_MISSING}")
    preferred = BACKENDS.get(prefer or "")
    return preferred if preferred in have else have[0]
