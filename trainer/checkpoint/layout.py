"""The checkpoint folder protocol, as pure functions over names and bytes.

    <root>/<run-id>/step-000001200/   every file of the step, manifest.json LAST
    <root>/<run-id>/latest            the committed step: the commit point

What "committed" means is defined once, in trainer.contract ("checkpoint
layout"): a step is committed iff `latest` names it. This module decides which
steps restore may try and in which order, and which may be pruned; it does no
I/O so each rule is tested on its own.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Mapping

from trainer import contract
from trainer.storage import FileInfo

#: The names of a step's files, from the one place they are defined.
REPLICATED_FILE = contract.REPLICATED_FILE
SHARDED_DIR = contract.SHARDED_DIR


@dataclasses.dataclass(frozen=True)
class Manifest:
    step: int
    world_size: int
    #: "replicated" (torch.save files) or "sharded" (torch.distributed.checkpoint)
    kind: str
    files: Mapping[str, FileInfo]
    created: float
    format: int = contract.MANIFEST_FORMAT


def manifest_to_bytes(m: Manifest) -> bytes:
    doc = {
        "format": m.format,
        "step": m.step,
        "world_size": m.world_size,
        "kind": m.kind,
        "created": m.created,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m.created)),
        "files": {k: {"size": v.size, "sha256": v.sha256} for k, v in sorted(m.files.items())},
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def manifest_from_bytes(data: bytes, *, expect_step: int) -> Manifest:
    """Parse a manifest; ValueError if it is not one for `expect_step`."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != contract.MANIFEST_FORMAT:
        raise ValueError(f"unknown manifest format {doc.get('format') if isinstance(doc, dict) else doc!r}")
    if doc.get("step") != expect_step:
        raise ValueError(f"manifest says step {doc.get('step')}, folder says {expect_step}")
    files = {str(k): FileInfo(size=int(v["size"]), sha256=str(v["sha256"])) for k, v in doc["files"].items()}
    if not files:
        raise ValueError("manifest lists no files")
    return Manifest(step=int(doc["step"]), world_size=int(doc["world_size"]), kind=str(doc["kind"]),
                    files=files, created=float(doc["created"]), format=int(doc["format"]))


def steps_in_listing(names: list[str]) -> list[int]:
    """Step numbers of the step folders in a run folder listing, ascending."""
    return sorted(s for s in (contract.parse_step_dir_name(n) for n in names) if s is not None)


def parse_latest(data: bytes | None) -> int | None:
    if data is None:
        return None
    try:
        step = int(data.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return step if step >= 0 else None


def restore_candidates(latest: bytes | None, listed_steps: list[int]) -> list[int]:
    """Steps to try on restore, best first: the one `latest` names, then older steps, newest first.

    `latest`: the bytes of the `latest` object, None when there is none. A step newer than
    `latest` is never tried: a commit cut after its manifest and before `latest` moved did not
    commit it. Without `latest` nothing was committed. A `latest` that names no step (it is
    written atomically, so only a hand or a foreign writer makes one) is taken as corrupt:
    every listed step is a fallback, newest first.
    """
    if latest is None:
        return []
    step = parse_latest(latest)
    older = sorted((s for s in set(listed_steps) if step is None or s < step), reverse=True)
    return ([step] if step is not None else []) + older


def steps_to_prune(committed: list[int], all_steps: list[int], *, newest: int, keep: int) -> list[int]:
    """Folders to delete after `newest` committed.

    Keeps the `keep` newest committed steps. Uncommitted folders older than
    `newest` are leftovers of failed saves and go too; anything newer than
    `newest` may be a save in flight and is left alone.
    """
    kept = set(sorted((s for s in committed if s <= newest), reverse=True)[:max(keep, 1)])
    kept.add(newest)
    return sorted(s for s in all_steps if s < newest and s not in kept)


# --- what a save cut short may have left: the names the upload sweep asks for one by one ---

#: torch.distributed.checkpoint's FileSystemWriter names (thread_count=1, as saver.py runs it):
#: one `__<rank>_0.distcp` of shards per rank, and the coordinator's `.metadata`.
DCP_METADATA = ".metadata"


def dcp_shard_file(rank: int) -> str:
    return f"__{rank}_0.distcp"


def steps_a_cut_save_may_be_in(latest: bytes | None, listed_steps: list[int]) -> list[int]:
    """Step folders in which a save cut short by a kill may have left an upload, newest first.

    A run saves only steps after the one it resumed from, so: the step `latest` names and the
    listed steps newer than it (uncommitted: a save cut before `latest` moved). Without a usable
    `latest` every listed step.
    """
    step = parse_latest(latest)
    return sorted((s for s in set(listed_steps) if step is None or s >= step), reverse=True)


def files_a_save_may_not_have_finished(world_size: int, listed: list[str]) -> list[str]:
    """Names (relative to the step folder) a save by `world_size` ranks writes and `listed` lacks:
    the files whose upload may still be open. The big ones first (rank 0's state, each rank's
    shards), the small per-rank files last.

    `listed`: the step folder's files, `dcp/...` for the shards. Its `rank-NNNNN.pt` files also
    tell the world size of the attempt that wrote them (each rank writes its own first), which
    may be larger than this attempt's. A folder with a manifest has none unfinished: rank 0
    writes the manifest only after every rank's files landed.
    """
    if contract.MANIFEST_NAME in listed:
        return []
    ranks = [r for r in (contract.parse_rank_file(n) for n in listed) if r is not None]
    world = max([world_size, *(r + 1 for r in ranks)])
    names = ([REPLICATED_FILE] + [f"{SHARDED_DIR}/{dcp_shard_file(r)}" for r in range(world)]
             + [f"{SHARDED_DIR}/{DCP_METADATA}"] + [contract.rank_file(r) for r in range(world)])
    have = set(listed)
    return [n for n in names if n not in have]
