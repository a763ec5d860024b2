"""The node copy: this node's files of the newest committed step, kept for restores that need no download.

A restore after an in-place restart (or in a new pod on the same node, where the folder outlives the
pod: a hostPath) wants the step `latest` names, whose bytes were on this node a moment ago: the save
that wrote them, or the restore that fetched them. So each rank keeps its files of the newest committed
step here, named by their sha256, and restore looks here before the object store. A file is used only
when its size and sha256 match the manifest read from the store, which stays the authority on which
step is newest: a copy of an older step has other hashes (or the same bytes, and then it is the same
file), and a corrupt or cut-short copy fails the check and is removed. Neither is ever loaded.

Under <node copy dir>/<run>-<hash of the run's URI>/ (one folder per run: runs may share a node):

    step-<N>/<sha256>            the kept files of step N, the newest committed (one step folder)
    incoming-<owner>-<random>    a file being written or fetched; it gets a final name only once
                                 complete (a link or a rename), so no final name holds a partial file
    .lock                        flock: one rank at a time admits files and prunes

Bounded: a step's files are admitted while the step folder stays within max_bytes; what does not fit
is not kept (restore reads it from the store). max_bytes 0 turns it off, and a local checkpoint folder
has none: the store already is this node's disk.

A node copy only ever saves time: no error here fails a save or a restore (each is one log line).
Standard library only: the supervisor's prefetch consults it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import re
import shutil
import uuid
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from trainer.errors import one_line
from trainer.processes import owner_gone, owner_tag, parse_owner_tag
from trainer.storage import FileInfo, file_info, spool_dir

log = logging.getLogger("kubetrain.checkpoint")

#: The default folder's name under the spool (KUBETRAIN_SPOOL_DIR).
FOLDER = "kubetrain-node-copy"
INCOMING = "incoming-"
STEP_PREFIX = "step-"
LOCK = ".lock"
#: How restore's log line names this source.
SOURCE = "the node copy"


@dataclasses.dataclass(frozen=True)
class NodeCopy:
    """One run's node copy: its folder on this node and its bound in bytes."""

    dir: str
    max_bytes: int


def run_folder(run_uri: str) -> str:
    """The run's folder name: readable (the run id), and unique per run URI (two roots may hold one run id)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", run_uri.rstrip("/").rsplit("/", 1)[-1])[:64]
    return f"{name}-{hashlib.sha256(run_uri.encode()).hexdigest()[:12]}"


def for_run(run_uri: str, *, base: str | None, max_bytes: int, store_is_local: bool) -> NodeCopy | None:
    """The run's node copy; None when off (max_bytes 0) or pointless (a local store)."""
    if max_bytes <= 0 or store_is_local:
        return None
    return NodeCopy(os.path.join(base or os.path.join(spool_dir(), FOLDER), run_folder(run_uri)), max_bytes)


# --- restore: look here first -------------------------------------------------------------------------


def _kept(node: NodeCopy, sha256: str) -> list[str]:
    try:
        folders = [n for n in os.listdir(node.dir) if n.startswith(STEP_PREFIX)]
    except OSError:
        return []
    return [p for n in folders if os.path.isfile(p := os.path.join(node.dir, n, sha256))]


def find(node: NodeCopy, expected: FileInfo) -> str | None:
    """A kept file with this sha256 and size, not hashed: a cheap look (the supervisor's prefetch
    skips its download for it; the rank that loads it verifies it)."""
    for path in _kept(node, expected.sha256):
        with contextlib.suppress(OSError):
            if os.stat(path).st_size == expected.size:
                return path
    return None


def verified(node: NodeCopy, expected: FileInfo, name: str) -> str | None:
    """A kept file whose size and sha256 match `expected` (read and hashed now), or None.

    One that does not match (a corrupt disk, a write a crash cut short) is removed, so no restore
    meets it again, and the caller reads the store."""
    for path in _kept(node, expected.sha256):
        try:
            got = file_info(path)
        except OSError as e:
            log.warning("node copy of %s unreadable (%s); reading the store", name, one_line(str(e)))
            continue
        if got == expected:
            return path
        log.warning("node copy of %s at %s has %d bytes and sha256 %s…, the manifest says %d and %s…; "
                    "removed, reading the store", name, path, got.size, got.sha256[:12], expected.size,
                    expected.sha256[:12])
        with contextlib.suppress(OSError):
            os.unlink(path)
    return None


# --- staging: a file on its way in ------------------------------------------------------------------


def incoming(node: NodeCopy) -> str:
    """A new name for a file on its way in; its owner's tag lets a later start remove it if the owner died."""
    os.makedirs(node.dir, exist_ok=True)
    return os.path.join(node.dir, f"{INCOMING}{owner_tag()}-{uuid.uuid4().hex[:8]}")


def stage(node: NodeCopy, src: str) -> str | None:
    """A complete local file's bytes under an incoming name (a hard link, else a copy); None on an error."""
    try:
        dest = incoming(node)
        try:
            os.link(src, dest)
        except OSError:  # another file system: the copy costs time, so the default folder is in the spool
            shutil.copyfile(src, dest)
        return dest
    except OSError as e:
        log.warning("could not keep a node copy of %s: %s", os.path.basename(src), one_line(str(e)))
        return None


class _Tee:
    """A write-only file: the upload's, and a local copy's. A failing local write (a full disk) ends only
    the copy, and so does passing `limit` bytes: a file larger than the bound is never kept, so a state of
    100s of GiB must not cost a second write of it to the node's disk on every save."""

    def __init__(self, upload: BinaryIO, local: BinaryIO | None, limit: int) -> None:
        self._upload, self._local, self._left = upload, local, limit
        self.failed = False

    def write(self, data: Any) -> int:
        if self._local is not None and not self.failed:
            self._left -= memoryview(data).nbytes
            try:
                if self._left < 0:
                    raise OSError("larger than the node copy's bound")
                self._local.write(data)
            except OSError:
                self.failed = True
        return self._upload.write(data)

    def flush(self) -> None:
        self._upload.flush()


def teed(node: NodeCopy, write: Callable[[BinaryIO], None], into: list[str]) -> Callable[[BinaryIO], None]:
    """`write` for Storage.write_file, which also writes the bytes to an incoming file: appended to `into`
    once complete. A retried upload calls it again: each call writes a fresh file, and only the last
    complete one is what was uploaded (last_complete)."""

    def both(upload: BinaryIO) -> None:
        try:
            path = incoming(node)
            local: BinaryIO | None = open(path, "wb")
        except OSError:
            path, local = "", None
        try:
            tee = _Tee(upload, local, node.max_bytes)
            write(tee)  # type: ignore[arg-type]  # torch.save needs only write and flush
        except BaseException:
            _close_and_remove(local, path)
            raise
        if local is not None:
            local.close()
            if tee.failed:
                _close_and_remove(None, path)
            else:
                into.append(path)

    return both


def last_complete(attempts: list[str]) -> str | None:
    """The file of the attempt that the upload kept (the last one); the earlier ones are removed."""
    drop(attempts[:-1])
    return attempts[-1] if attempts else None


def _close_and_remove(f: BinaryIO | None, path: str) -> None:
    if f is not None:
        with contextlib.suppress(OSError):
            f.close()
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


def drop(paths: Iterable[str | None]) -> None:
    """Remove incoming files (never a kept one: a restore's staged list may name those)."""
    for p in paths:
        if p and os.path.basename(p).startswith(INCOMING):
            with contextlib.suppress(OSError):
                os.unlink(p)


# --- after a commit or a restore: keep the step, drop the rest -------------------------------------


@contextlib.contextmanager
def _locked(folder: str) -> Iterator[None]:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the holder exits, even by SIGKILL
        yield


def admit(step_files: dict[str, int], files: list[tuple[str, FileInfo]], max_bytes: int) -> list[int]:
    """Which of `files` (indexes) to admit into a step folder that holds `step_files` (sha256: size):
    those not there yet, in order, while the folder's total stays within `max_bytes` (pure)."""
    used, have, out = sum(step_files.values()), set(step_files), []
    for i, (_, info) in enumerate(files):
        if info.sha256 in have or used + info.size > max_bytes:
            continue
        used += info.size
        have.add(info.sha256)
        out.append(i)
    return out


def keep(node: NodeCopy, step: int, files: list[tuple[str | None, FileInfo]]) -> None:
    """After step `step` committed (or was restored): admit this rank's `files` (paths, incoming or already
    kept) into its step folder within the bound; remove every other step folder and what dead writers left.

    Ordering makes the prune safe without a collective: a rank admits step N's files before it takes
    part in step N+1's commit, and a rank prunes step N only after that commit.
    """
    here = [(p, info) for p, info in files if p]
    try:
        with _locked(node.dir):
            step_dir = os.path.join(node.dir, f"{STEP_PREFIX}{step}")
            os.makedirs(step_dir, exist_ok=True)
            present = {n: os.stat(os.path.join(step_dir, n)).st_size for n in os.listdir(step_dir)}
            for i in admit(present, here, node.max_bytes):
                src, info = here[i]
                with contextlib.suppress(FileExistsError):
                    os.link(src, os.path.join(step_dir, info.sha256))  # all or nothing: src is complete
            for name in os.listdir(node.dir):
                path = os.path.join(node.dir, name)
                if name.startswith(STEP_PREFIX) and path != step_dir:
                    shutil.rmtree(path, ignore_errors=True)
                elif name.startswith(INCOMING) and (owner := parse_owner_tag(name[len(INCOMING):])) \
                        and owner_gone(owner):
                    with contextlib.suppress(OSError):
                        os.unlink(path)  # a kill's leftover
    except OSError as e:
        log.warning("node copy of step %d not kept: %s", step, one_line(str(e)))
    finally:
        drop(p for p, _ in here)


def kept_bytes(node: NodeCopy) -> int:
    """What the node copy holds now (tests, the bench)."""
    total = 0
    for root, _, names in os.walk(node.dir):
        total += sum(os.stat(os.path.join(root, n)).st_size for n in names
                     if os.path.basename(root).startswith(STEP_PREFIX))
    return total
