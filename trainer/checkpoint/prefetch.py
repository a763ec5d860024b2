"""The supervisor fetches the newest checkpoint while the ranks are still starting.

A restarted pod spends seconds before any rank reaches restore(): the
interpreter and `import torch` in torchrun and in every rank, process-group
init, building the model (3.3-3.6 s on the CPU bench, M5). The supervisor
needs none of that, so it reads `latest` and downloads that step's
replicated state.pt into a folder of the spool meanwhile; at 256 MiB the
download (2.5 s against moto) then hides behind the start.

The file is named by the sha256 its manifest lists and appears under that
name only once its bytes matched it, so a rank loads it without hashing
again. While the download runs, a `.pending` marker sits in the folder
(written before torchrun starts, so no rank can miss it): restore waits for
it to go rather than start a second download of the same bytes. A step that
restore picks but the supervisor did not fetch (a fallback, a warm start) is
fetched as before. The supervisor removes the folder when it exits.

A SIGKILLed supervisor cannot: its folder (with the 256 MiB it may hold) stays in the spool. So the
folder's name says who owns it, `kubetrain-prefetch-<pid namespace>-<pid>-<start time>-<random>`, and
each start sweeps the folders whose owner is gone (in its own PID namespace; another's it cannot judge).

Imports no torch: it runs in the supervisor, PID 1 of a pod.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Mapping

from trainer import contract
from trainer.checkpoint import handoff, layout, node_copy as nc
from trainer.errors import one_line
from trainer.processes import owner_tag, pid_namespace, start_time
from trainer.storage import file_info, join, open_storage, spool_dir

log = logging.getLogger("kubetrain.prefetch")

PENDING = ".pending"
FOLDER_PREFIX = "kubetrain-prefetch-"


def parse_owner(name: str) -> tuple[str, int, int] | None:
    """(pid namespace, pid, start time) from a prefetch folder's name; None for any other name."""
    if not name.startswith(FOLDER_PREFIX):
        return None
    parts = name[len(FOLDER_PREFIX):].split("-")
    if len(parts) < 4 or not all(p.isdigit() for p in parts[:3]):
        return None  # not ours, or from before owners were named: left alone
    return parts[0], int(parts[1]), int(parts[2])


def sweep_spool(spool: str) -> list[str]:
    """Remove the prefetch folders in `spool` whose owner (a supervisor of this PID namespace) is gone."""
    swept = []
    ns = pid_namespace()
    try:
        names = os.listdir(spool)
    except OSError:
        return swept
    for name in names:
        owner = parse_owner(name)
        if owner is None or owner[0] != ns or start_time(owner[1]) == owner[2]:
            continue  # not ours to judge, or its owner is alive
        shutil.rmtree(os.path.join(spool, name), ignore_errors=True)
        swept.append(name)
    if swept:
        log.info("removed %d prefetch folder(s) that killed supervisors left in %s: %s", len(swept), spool,
                 " ".join(swept))
    return swept


class Prefetch:
    """The supervisor's side: `start()` before torchrun, `close()` after it."""

    def __init__(self, uri: str, run_id: str, *, node_copy_dir: str | None = None,
                 node_copy_max_bytes: int = 0) -> None:
        self.uri, self.run_id = uri, run_id
        self.node_copy = (node_copy_dir, node_copy_max_bytes)
        self.dir: str | None = None

    def start(self) -> str | None:
        """Begin the download in the background; the folder the ranks should look in (ENV_PREFETCH_DIR)."""
        if contract.is_local_uri(self.uri):
            return None  # a local folder: restore reads it in place, nothing to fetch ahead
        try:
            spool = spool_dir()
            sweep_spool(spool)
            self.dir = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{owner_tag()}-", dir=spool)
            open(os.path.join(self.dir, PENDING), "w").close()
        except OSError as e:  # restore will meet the same spool and say so; the run need not die here
            log.warning("no prefetch of the newest checkpoint: %s", one_line(str(e)))
            self.close()
            self.dir = None
            return None
        # Never joined: see close().
        threading.Thread(target=self._run, name="kubetrain-prefetch", daemon=True).start()
        return self.dir

    def close(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)  # a download still running fails quietly

    def _run(self) -> None:
        assert self.dir is not None
        try:
            fetched = fetch_latest(self.uri, self.run_id, self.dir, node_copy=self.node_copy)
            if fetched:
                log.info("prefetched %s", fetched)
        except Exception as e:  # restore fetches for itself; a prefetch only ever saves time
            log.warning("prefetch of the newest checkpoint failed (restore will fetch it): %s", one_line(str(e)))
        finally:
            try:
                os.unlink(os.path.join(self.dir, PENDING))
            except FileNotFoundError:
                pass


def fetch_latest(uri: str, run_id: str, into: str, *,
                 node_copy: tuple[str | None, int] = (None, 0)) -> str | None:
    """Download the newest committed step's replicated file into `into`, named by its sha256, once verified.

    What was fetched, in words; None when there is nothing to fetch. Not when the node copy
    (`node_copy`: its folder and bound) holds a file of that size and sha256: the rank that
    loads it verifies it, and reads the store itself if it fails.
    """
    t0 = time.monotonic()
    storage = open_storage(uri)
    run_uri = join(storage.uri, run_id)
    node = nc.for_run(run_uri, base=node_copy[0], max_bytes=node_copy[1], store_is_local=storage.is_local)
    step = layout.parse_latest(storage.read_small(join(run_uri, contract.LATEST_NAME)))
    if step is None:
        return None
    step_uri = join(run_uri, contract.step_dir_name(step))
    raw = storage.read_small(join(step_uri, contract.MANIFEST_NAME))
    if raw is None:
        return None
    expected = layout.manifest_from_bytes(raw, expect_step=step).files.get(layout.REPLICATED_FILE)
    if expected is None:
        return None  # a sharded checkpoint: every rank reads its own part
    if node is not None and nc.find(node, expected) is not None:
        log.info("no prefetch: %s/%s is in the node copy", contract.step_dir_name(step), layout.REPLICATED_FILE)
        return None
    with storage.fetch(join(step_uri, layout.REPLICATED_FILE)) as local:
        if file_info(local) != expected:
            raise ValueError(f"{contract.step_dir_name(step)}/{layout.REPLICATED_FILE} does not match its manifest")
        handoff.publish(local, os.path.join(into, expected.sha256))
    return (f"{contract.step_dir_name(step)}/{layout.REPLICATED_FILE} ({expected.size / 2**20:.0f} MiB) "
            f"in {time.monotonic() - t0:.1f} s")


def prefetched(sha256: str, env: Mapping[str, str], timeout_s: float) -> str | None:
    """The ranks' side: the supervisor's verified copy of the file with this sha256, or None.

    Waits while the supervisor's download is still under way (at most `timeout_s`).
    """
    folder = env.get(contract.ENV_PREFETCH_DIR)
    if not folder:
        return None
    path, pending = os.path.join(folder, sha256), os.path.join(folder, PENDING)
    deadline = time.monotonic() + timeout_s
    while os.path.exists(pending) and not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(handoff.POLL_S)
    return path if os.path.exists(path) else None
