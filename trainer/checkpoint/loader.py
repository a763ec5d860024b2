"""Fetch and verify one rank's files of one step: what a rank found, and its verdict on the step.

The restore policy (restore.py) decides what to do with the verdicts of all ranks; this module only
judges. Only a fact about the bytes (a missing file, a checksum mismatch) condemns a step.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import shutil
import tempfile
from typing import Any

import torch

from trainer import contract, dist
from trainer.checkpoint import handoff, layout, node_copy, prefetch
from trainer.checkpoint.config import COORD_TIMEOUT_S, CheckpointRun
from trainer.checkpoint.node_copy import NodeCopy
from trainer.errors import StorageConfigError, StorageError, one_line
from trainer.storage import FileInfo, Storage, file_info, join, spool_dir

log = logging.getLogger("kubetrain.checkpoint")


def load_own(path: str) -> Any:
    # Our own, checksum-verified file: it holds RNG tuples and user state, not only tensors.
    return torch.load(path, map_location="cpu", weights_only=False)


@dataclasses.dataclass
class Loaded:
    step: int
    replicated: Any | None
    per_rank: Any | None
    dcp_dir: str | None
    #: Where local rank 0 handed the replicated file to the node's other ranks (handoff.py).
    shared: str | None = None
    #: The number of ranks that saved it, when not this run's (trainer/checkpoint/resize.py).
    saved_world_size: int | None = None
    #: Where each of this rank's files came from (node_copy.SOURCE, the store's URI, ...): restore's log line.
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    #: This rank's verified files for the node copy (incoming or already kept): kept once the ranks agree.
    staged: list[tuple[str | None, FileInfo]] = dataclasses.field(default_factory=list)

    def describe_sources(self) -> str:
        """"the node copy", "s3://b/ckpts/run", or each source with its files when there were several."""
        by: dict[str, list[str]] = {}
        for name, source in self.sources.items():
            by.setdefault(source, []).append(name)
        if len(by) == 1:
            return next(iter(by))
        return " and ".join(f"{source} ({', '.join(sorted(names))})" for source, names in sorted(by.items())) \
            or "no files of its own"


class Corrupt(Exception):
    """A file's bytes differ from its manifest: verified, not a read error."""


class StepVerdict(enum.IntEnum):
    """One rank's judgement of a checkpoint step. The ranks agree on the largest: a step verified
    bad anywhere is bad, and a configuration error ends the restore whatever else was found."""

    OK = 0
    #: A storage error while reading: nothing is known about the step, so read it again later.
    TRANSIENT = 1
    #: Verified incomplete or corrupt (no manifest, size or sha256 mismatch, a missing file): skip it.
    UNUSABLE = 2
    #: The store refuses us (no such bucket, wrong credentials): no step can be read, stop (exit 2).
    PERMANENT = 3

    def describe(self) -> str:
        return {StepVerdict.OK: "usable", StepVerdict.TRANSIENT: "a storage error, the step is not known to be bad",
                StepVerdict.UNUSABLE: "verified unusable", StepVerdict.PERMANENT: "a configuration error"}[self]


def read_failure_verdict(exc: BaseException) -> StepVerdict:
    """What an exception raised while reading a step says about the step.

    Only a fact about the bytes (a missing file, a checksum mismatch) condemns a step; a
    storage error says nothing about it, and falling back on one walked restores back
    through every retained step. A verified file that torch cannot load stays unusable.
    """
    if isinstance(exc, StorageConfigError):
        return StepVerdict.PERMANENT
    if isinstance(exc, (Corrupt, FileNotFoundError)):
        return StepVerdict.UNUSABLE
    if isinstance(exc, (StorageError, OSError, TimeoutError, ConnectionError)):
        return StepVerdict.TRANSIENT
    return StepVerdict.UNUSABLE


def handoff_prefix(token: str, storage: Storage) -> str | None:
    """Where this node's ranks share one download (handoff.py); None where there is nothing to share."""
    return None if storage.is_local else handoff.node_prefix(token, os.environ)


def try_load(run: CheckpointRun, step: int, *, run_uri: str | None = None, storage: Storage | None = None,
             per_rank: bool = True, shared: str | None = None) -> tuple[Loaded, "tuple[StepVerdict, str] | None"]:
    """Fetch and verify this rank's files of `step`; (loaded, None) or (partial, (verdict, reason)).

    Another run's folder for a warm start: `run_uri` and its `storage`, without per-rank state (and
    without the node copy, which holds this run's files). `shared`: the node's handoff prefix; local
    rank 0 then fetches the replicated file for all.
    """
    loaded = Loaded(step=step, replicated=None, per_rank=None, dcp_dir=None,
                    shared=f"{shared}{contract.step_dir_name(step)}-{layout.REPLICATED_FILE}" if shared else None)
    own = run_uri is None or run_uri == run.run_uri
    failure = _load_into(run, loaded, join(run_uri or run.run_uri, contract.step_dir_name(step)),
                         storage or run.storage, per_rank, run.node if own else None)
    if failure is not None and loaded.shared is not None and dist.local_rank() == 0:
        # The node's other ranks may be waiting for it; they must judge the step as this rank did.
        handoff.publish_failure(loaded.shared, f"{failure[0].name}\n{failure[1]}")
    return loaded, failure


def _load_into(run: CheckpointRun, loaded: Loaded, step_uri: str, storage: Storage, per_rank: bool,
               node: NodeCopy | None) -> "tuple[StepVerdict, str] | None":
    """try_load's work: fill `loaded`; None, or what this rank found wrong and why."""
    step = loaded.step
    unusable = StepVerdict.UNUSABLE
    try:
        raw = storage.read_small(join(step_uri, contract.MANIFEST_NAME))
        if raw is None:
            return unusable, "no manifest.json (the save never committed)"
        try:
            manifest = layout.manifest_from_bytes(raw, expect_step=step)
        except (ValueError, KeyError, TypeError) as e:
            return unusable, f"manifest.json is invalid: {e}"
        if layout.REPLICATED_FILE in manifest.files:
            loaded.replicated = _fetch_replicated(step_uri, manifest.files[layout.REPLICATED_FILE], storage,
                                                  loaded, node)
        own_file = contract.rank_file(run.rank)
        if per_rank and manifest.world_size != run.world_size:
            loaded.saved_world_size = manifest.world_size
        if not per_rank:
            pass  # a warm start takes no RNG streams or data position from another run
        elif own_file in manifest.files:
            loaded.per_rank = fetch_verified(storage, step_uri, own_file, manifest.files[own_file],
                                             into=loaded, node=node)
        elif manifest.world_size != run.world_size:
            pass  # a rank that did not exist then: Trainables.apply seeds it (resize.py)
        else:
            return unusable, f"manifest.json lists no {own_file}"
        if manifest.kind == "sharded":
            loaded.dcp_dir = tempfile.mkdtemp(dir=spool_dir(), prefix=f"dcp-load-r{run.rank}-")
            for name, info in manifest.files.items():
                if name.startswith(layout.SHARDED_DIR + "/"):
                    fetch_verified(storage, step_uri, name, info, into=loaded, node=node,
                                   copy_to=os.path.join(loaded.dcp_dir, name.split("/", 1)[1]))
        return None
    except Corrupt as e:
        return unusable, str(e)
    except handoff.HandoffFailed as e:
        verdict, _, reason = str(e).partition("\n")
        if verdict not in StepVerdict.__members__:  # the wait itself timed out: nothing is known of the step
            verdict, reason = StepVerdict.TRANSIENT.name, str(e)
        return StepVerdict[verdict], f"local rank 0 could not fetch {layout.REPLICATED_FILE}: {reason}"
    except FileNotFoundError as e:
        return unusable, f"{e} is missing"
    except Exception as e:
        return read_failure_verdict(e), f"{type(e).__name__}: {one_line(str(e))}"


def _fetch_replicated(step_uri: str, expected: FileInfo, storage: Storage, loaded: Loaded,
                      node: NodeCopy | None) -> Any:
    """The replicated state: the supervisor's prefetched copy, fetched by this rank (the node copy first),
    or through the node's handoff at `loaded.shared`."""
    name, shared = layout.REPLICATED_FILE, loaded.shared
    ready = prefetch.prefetched(expected.sha256, os.environ, COORD_TIMEOUT_S)
    if ready is not None:
        loaded.sources[name] = f"{storage.uri} (the supervisor's prefetch)"
        if node is not None and (shared is None or dist.local_rank() == 0):
            loaded.staged.append((node_copy.stage(node, ready), expected))
        return load_own(ready)
    if shared is None:
        return fetch_verified(storage, step_uri, name, expected, into=loaded, node=node)
    if dist.local_rank() != 0:
        loaded.sources[name] = "local rank 0's copy"
        return load_own(handoff.wait_for(shared, COORD_TIMEOUT_S))
    fetch_verified(storage, step_uri, name, expected, into=loaded, node=node,
                   publish=lambda local: handoff.publish(local, shared))
    return load_own(shared)


def fetch_verified(storage: Storage, step_uri: str, name: str, expected: FileInfo, copy_to: str | None = None,
                   publish: Any = None, *, into: Loaded | None = None, node: NodeCopy | None = None) -> Any:
    """Fetch `name` (from the node copy when it holds it verified, else the store), check it against the
    manifest; then copy it to `copy_to`, hand it to `publish(local_path)`, or (neither given) return it
    loaded. `into`: where to record its source and, with a node copy, the file to keep there."""
    if node is not None and (kept := node_copy.verified(node, expected, name)) is not None:
        if into is not None:
            into.sources[name] = node_copy.SOURCE
            into.staged.append((kept, expected))
        return _use(kept, copy_to, publish)
    with storage.fetch(join(step_uri, name)) as local:
        got = file_info(local)
        if got.size != expected.size:
            raise Corrupt(f"{name} has {got.size} bytes, the manifest says {expected.size} (truncated?)")
        if got.sha256 != expected.sha256:
            raise Corrupt(f"{name} fails its sha256 check (corrupt)")
        if into is not None:
            into.sources[name] = storage.uri
            if node is not None:  # a link while the fetched file exists (the spool): no copy
                into.staged.append((node_copy.stage(node, local), expected))
        return _use(local, copy_to, publish)


def _use(local: str, copy_to: str | None, publish: Any) -> Any:
    if copy_to is not None:
        shutil.copyfile(local, copy_to)
        return None
    if publish is not None:
        publish(local)
        return None
    return load_own(local)


def discard(loaded: Loaded | None) -> None:
    """Remove what loading `loaded` left on local disk. Called after the ranks' all_true,
    so every local rank is done reading the handoff file."""
    if loaded is None:
        return
    node_copy.drop(p for p, _ in loaded.staged)  # what keep() did not take (a step not agreed on)
    loaded.staged.clear()
    if loaded.dcp_dir is not None:
        shutil.rmtree(loaded.dcp_dir, ignore_errors=True)
    if loaded.shared is not None and dist.local_rank() == 0:
        handoff.remove(loaded.shared)
