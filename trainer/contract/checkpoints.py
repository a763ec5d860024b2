"""Checkpoint URIs, the layout of a run folder (what "committed" means), and scheduled runs' names."""

from __future__ import annotations

import re

# --- checkpoint URIs: the one rule for what is local and what the runtime can open ---

#: URI schemes the runtime opens (trainer/storage/: boto3 for s3/s3a, fsspec for the rest;
#: gs/gcs and az/abfs need gcsfs and adlfs beside fsspec). `launch` rejects any other scheme
#: before it creates anything: the pod would only fail with exit 2 once it was scheduled.
CHECKPOINT_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})
#: Schemes whose URI names no bucket or host: the path is all there is.
_SCHEMES_WITHOUT_HOST = frozenset({"file", "memory"})
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*$")


def is_local_uri(uri: str) -> bool:
    """A folder on this machine (a path or file://), read in place rather than downloaded."""
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The path of a local URI (is_local_uri): a file:// URI without its scheme, a path as it is."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


def checkpoint_uri_problem(uri: str, schemes: frozenset[str] | set[str] = CHECKPOINT_SCHEMES) -> str | None:
    """Why `uri` cannot be a checkpoint root, in one line; None when it can.

    `schemes`: the protocols the caller can open (the runtime passes what is installed).
    """
    if not uri:
        return "checkpoint URI is empty; pass --checkpoint URI (a folder, file://, s3://BUCKET/PREFIX, gs://...)"
    if is_local_uri(uri):
        return None
    scheme, rest = uri.split("://", 1)
    if not _SCHEME_RE.match(scheme) or scheme not in schemes:
        known = ", ".join(f"{s}://" for s in sorted(CHECKPOINT_SCHEMES))  # the usual ones, not all of fsspec
        return f"checkpoint URI {uri!r}: unknown scheme {scheme!r}; use a folder or one of {known}"
    if scheme not in _SCHEMES_WITHOUT_HOST and not rest.split("/", 1)[0]:
        return f"checkpoint URI {uri!r} has no bucket; use {scheme}://BUCKET/PREFIX"
    return None


# --- checkpoint layout: <uri>/<run-id>/step-000001200/..., <uri>/<run-id>/latest ---
#
#     <uri>/<run-id>/step-000001200/   every file of the step, then manifest.json (sizes, sha256s)
#     <uri>/<run-id>/latest            "1200\n": the step the run resumes from
#
# A step is committed iff `latest` names it. The commit point is the atomic replace of `latest`
# (a put on an object store, write-temp-then-rename on a folder), after the step's manifest. A step
# folder with a manifest that `latest` does not (yet) name is NOT committed: the commit was cut
# between the two writes, and no restore, checker or report may treat it as one. Restore trusts
# `latest` and falls back to an older step (one `latest` named before) only when the step it names
# is verified corrupt (no manifest, a size or sha256 mismatch, a missing file); without `latest`
# nothing is committed and the run starts from step 0. A commit cut while `latest` was replaced leaves
# `latest` as it was and, on a folder, a `latest.tmp-<pid>-<n>` file: the next start and every commit
# remove such leftovers. Older steps are pruned only after a newer one committed, manifest first.

MANIFEST_NAME = "manifest.json"
#: The run folder's writer lease: who writes this folder now (trainer/writer_lease.py). Node 0's
#: supervisor holds it while its run lives; a second live writer of another job finds it and exits 2.
WRITER_LEASE_NAME = "writer.json"
#: A replicated checkpoint's state on rank 0 (model, optimizer, scheduler, extra), one torch.save file.
REPLICATED_FILE = "state.pt"
#: A sharded checkpoint's torch.distributed.checkpoint files, under this folder of the step.
SHARDED_DIR = "dcp"
LATEST_NAME = "latest"
STEP_DIR_PREFIX = "step-"
STEP_DIGITS = 9
MANIFEST_FORMAT = 1
_STEP_DIR_RE = re.compile(r"^step-(\d{%d,})$" % STEP_DIGITS)


def step_dir_name(step: int) -> str:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"{STEP_DIR_PREFIX}{step:0{STEP_DIGITS}d}"


def rank_file(rank: int) -> str:
    """Each rank's own state in a step (RNG streams, data position): `rank-00003.pt`."""
    return f"rank-{rank:05d}.pt"


_RANK_FILE_RE = re.compile(r"^rank-(\d{5,})\.pt$")


def parse_rank_file(name: str) -> int | None:
    """The rank of a `rank-NNNNN.pt` file name, or None for anything else."""
    m = _RANK_FILE_RE.match(name)
    return int(m.group(1)) if m else None


def parse_step_dir_name(name: str) -> int | None:
    """The step of a `step-NNNNNNNNN` folder name, or None for anything else."""
    m = _STEP_DIR_RE.match(name.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


# --- scheduled runs: <schedule>-<minutes since the epoch> ------------------------------
# The CronJob controller names each Job <cronjob>-<scheduled time in Unix minutes>; a run
# (its PyTorchJob and checkpoint folder) takes its Job's name, so runs sort by time and a
# retried submitter pod finds its run again. `launch schedule trigger` names its Jobs alike.

_SCHEDULED_RUN_RE = re.compile(r"^(?P<schedule>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)-(?P<minutes>[0-9]{8,})$")


def scheduled_run_name(schedule: str, unix_seconds: float) -> str:
    return f"{schedule}-{int(unix_seconds) // 60}"


def parse_scheduled_run_name(name: str) -> tuple[str, int] | None:
    """(schedule, minutes) of a scheduled run's name, or None for any other name."""
    m = _SCHEDULED_RUN_RE.match(name)
    return (m.group("schedule"), int(m.group("minutes"))) if m else None
