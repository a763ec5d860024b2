"""Housekeeping of a run folder that a killed writer left untidy; rank 0 only, never fatal."""

from __future__ import annotations

import logging
import os

from trainer.errors import one_line
from trainer.storage import Storage

log = logging.getLogger("kubetrain.checkpoint")


def abort_stale_uploads(storage: Storage, run_uri: str, started_before: float) -> None:
    """Abort multipart uploads an earlier attempt of this run left behind (a SIGKILL mid-upload).

    Only those begun before `started_before` (when the Checkpointer was made): no save of this
    attempt has started yet, and the supervisor left no rank of an earlier attempt running on this node.
    """
    try:
        aborted = storage.abort_stale_uploads(run_uri, started_before)
    except Exception as e:  # a sweep only saves money; the restore must not wait for it
        log.warning("could not sweep incomplete uploads under %s: %s", run_uri, one_line(str(e)))
        return
    if aborted:
        log.warning("aborted %d incomplete upload(s) an earlier attempt left under %s: %s", len(aborted),
                    run_uri, ", ".join(sorted(set(aborted))))


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
