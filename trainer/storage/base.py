"""What every storage backend offers, and the pieces they share (pure or local-only).

Paths are `str`, never `Path`: `Path` turns `s3://b/k` into `s3:/b/k`.

Large files (the shards) go through `write_file`, which hashes the bytes as
they are written so the manifest's checksums cost no second pass, and
`fetch`, which gives the checkpoint layer a local copy to verify. Small files
(manifest, `latest`) go through `write_small` / `read_small`, which replace
the object atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile
from typing import BinaryIO, Callable

from trainer import contract

#: Bytes per hashing read.
CHUNK = 8 << 20


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What the manifest records of one file."""

    size: int
    sha256: str


class HashingWriter:
    """A write-only file wrapper that counts and hashes what passes through."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:  # torch.save writes bytes and memoryviews
        self._hash.update(data)
        n = self._raw.write(data)
        self.size += len(data) if n is None else n
        return len(data) if n is None else n

    def flush(self) -> None:
        self._raw.flush()

    def info(self) -> FileInfo:
        return FileInfo(size=self.size, sha256=self._hash.hexdigest())


def file_info(local_path: str) -> FileInfo:
    """Size and sha256 of a local file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(local_path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return FileInfo(size=size, sha256=h.hexdigest())


# --- what an object store's error means (pure) -------------------------------------------


def spool_dir() -> str:
    """Local scratch for staging uploads and downloads (KUBETRAIN_SPOOL_DIR)."""
    path = os.environ.get(contract.ENV_SPOOL_DIR) or tempfile.gettempdir()
    os.makedirs(path, exist_ok=True)
    return path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


class Storage:
    """Storage rooted at a URI. Use `open_storage(uri)`."""

    uri: str
    is_local: bool = False

    def write_file(self, path: str, write: Callable[[BinaryIO], None]) -> FileInfo:
        """Stream a large file to `path` via `write(fileobj)`; return its size and hash."""
        raise NotImplementedError

    def fetch(self, path: str) -> contextlib.AbstractContextManager[str]:
        """A local path holding the object's bytes, valid inside the `with`."""
        raise NotImplementedError

    def write_small(self, path: str, data: bytes, *, before_replace: Callable[[], None] | None = None) -> None:
        """Replace the object at `path` with `data`, atomically.

        `before_replace` (a fault hook) runs once the new bytes are staged and the old object is
        still in place: on a folder, between the temp file and its rename; elsewhere, before the put.
        """
        raise NotImplementedError

    def read_small(self, path: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        raise NotImplementedError

    def list_names(self, path: str) -> list[str]:
        """Names (files and folders) directly under `path`; [] when it does not exist."""
        raise NotImplementedError

    def remove_tree(self, path: str) -> None:
        raise NotImplementedError

    def remove(self, path: str) -> None:
        """Delete one file; a missing one is not an error."""
        raise NotImplementedError

    def remove_leftover_temps(self, path: str, *, recursive: bool = False) -> list[str]:
        """Remove the temp files (`<name>.tmp-<pid>-<n>`) that writes cut short by a kill left in the folder
        `path` (and below it with `recursive`); their paths. Only a folder has them: an object store's
        put is atomic. The caller makes sure nothing is writing there now."""
        return []

    def abort_stale_uploads(self, path: str, started_before: float,
                            exact: Callable[[], list[str]] | None = None) -> list[str]:
        """Abort incomplete multipart uploads under the folder `path` begun before `started_before`
        (Unix time); the keys aborted. Only object stores have them.

        `exact`: the paths under `path` that may have an upload open, asked for one by one
        when the server lists none under the folder (MinIO lists uploads only by exact key);
        called only then.
        """
        return []
