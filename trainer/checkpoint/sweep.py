"""Housekeeping of a run folder that a killed writer left untidy; rank 0 only, never fatal."""

from __future__ import annotations

import logging
import os

from trainer import contract
from trainer.checkpoint import layout
from trainer.errors import one_line
from trainer.storage import Storage, join

log = logging.getLogger("kubetrain.checkpoint")


#: The most requests one sweep makes to find uploads by exact key (files_a_cut_save_may_have_open).
MAX_EXACT_SWEEP_REQUESTS = 128


def abort_stale_uploads(storage: Storage, run_uri: str, started_before: float, world_size: int) -> None:
    """Abort multipart uploads an earlier attempt of this run left behind (a SIGKILL mid-upload).

    Only those begun before `started_before` (when the Checkpointer was made): no save of this
    attempt has started yet, and the supervisor left no rank of an earlier attempt running on this node.
    """
    try:
        aborted = storage.abort_stale_uploads(
            run_uri, started_before, exact=lambda: files_a_cut_save_may_have_open(storage, run_uri, world_size))
    except Exception as e:  # a sweep only saves money; the restore must not wait for it
        log.warning("could not sweep incomplete uploads under %s: %s", run_uri, one_line(str(e)))
        return
    if aborted:
        log.warning("aborted %d incomplete upload(s) an earlier attempt left under %s: %s", len(aborted),
                    run_uri, ", ".join(sorted(set(aborted))))


def files_a_cut_save_may_have_open(storage: Storage, run_uri: str, world_size: int) -> list[str]:
    """The paths whose multipart upload a save cut short by a kill may have left open, for a server
    that lists uploads only by exact key (MinIO): the files missing from the step folders a save
    may have been writing (layout.steps_a_cut_save_may_be_in), the big ones first. Every multipart
    upload of a save starts after its rank's small rank file landed in the same folder (saver.py),
    so a folder holding an open upload is always listed.

    Bounded, because it runs at every start where the server listed no upload under the run (on
    AWS S3 too, where there are none): 1 read of `latest`, 1 listing of the run folder, 1 listing
    per step folder from the committed one on (2 for a cut sharded save's), then 1 request per
    missing file; MAX_EXACT_SWEEP_REQUESTS (128) in all. A clean restart lists one such folder, the
    committed one, whose manifest says nothing in it is unfinished: 3 requests (4 with the listing
    by folder before). A 2-rank save cut in rank 0's state.pt: 3 + 1 + 4 = 8. A 1024-rank sharded
    save killed before most shards landed would need more than the cap: the rest is what the
    bucket's lifecycle rule is for (`launch` warns when there is none), and MinIO's own
    stale_uploads_expiry (24h by default).
    """
    latest = storage.read_small(join(run_uri, contract.LATEST_NAME))
    steps = layout.steps_a_cut_save_may_be_in(latest, layout.steps_in_listing(storage.list_names(run_uri)))
    requests, paths = 2, []
    for step in steps:
        if requests + len(paths) >= MAX_EXACT_SWEEP_REQUESTS:
            break
        step_uri = join(run_uri, contract.step_dir_name(step))
        names = storage.list_names(step_uri)
        requests += 1
        if layout.SHARDED_DIR in names and contract.MANIFEST_NAME not in names:
            names += [f"{layout.SHARDED_DIR}/{n}" for n in storage.list_names(join(step_uri, layout.SHARDED_DIR))]
            requests += 1
        paths += [join(step_uri, n) for n in layout.files_a_save_may_not_have_finished(world_size, names)]
    return paths[:max(0, MAX_EXACT_SWEEP_REQUESTS - requests)]


def remove_leftover_temps(storage: Storage, folder: str, recursive: bool = False) -> None:
    """Remove the temp files a kill left in `folder` (a `latest.tmp-*` of a commit cut while `latest`
    was replaced); the caller knows nothing else writes there now. Never fails a restore or a commit."""
    try:
        removed = storage.remove_leftover_temps(folder, recursive=recursive)
    except OSError as e:
        log.warning("could not remove leftover temp files under %s: %s", folder, one_line(str(e)))
        return
    if removed:
        log.info("removed %d temp file(s) a killed write left: %s", len(removed),
                 ", ".join(os.path.basename(p) for p in sorted(removed)))
