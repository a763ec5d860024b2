"""Unpack the code bundle the launcher shipped, after checking it is the one it sent.

The bundle is a tar.gz made by the launcher (a ConfigMap for small code, the
object store for large). Nothing in it may land outside the work directory:
absolute paths, `..`, links and device files are refused, not skipped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile

from trainer.errors import StorageError, UsageError
from trainer.storage import open_storage


def _fetch(uri: str, dest: str) -> None:
    """Copy the bundle through trainer/storage, as checkpoints are read: its retries, and its error
    classes (a missing bucket or refused credentials is StorageConfigError, exit 2; an outage that
    outlasts the retries StorageError, exit 201 for a later retry, never a permanent failure)."""
    folder = uri.rstrip("/").rpartition("/")[0]
    with open_storage(folder or uri).fetch(uri) as local:
        shutil.copyfile(local, dest)


def safe_members(tar: tarfile.TarFile, root: str) -> list[tarfile.TarInfo]:
    """Every member, if each is a plain file or folder that stays under `root`; UsageError otherwise."""
    root = os.path.realpath(root)
    members = tar.getmembers()
    for m in members:
        if not (m.isfile() or m.isdir()):
            raise UsageError(f"code bundle member {m.name!r} is a link or special file; refusing to unpack")
        target = os.path.realpath(os.path.join(root, m.name))
        if m.name.startswith("/") or (target != root and not target.startswith(root + os.sep)):
            raise UsageError(f"code bundle member {m.name!r} would land outside {root}; refusing to unpack")
    return members


def unpack(uri: str, sha256: str | None, workdir: str | None = None) -> str:
    """Fetch, verify and unpack the bundle; return the folder it is in."""
    workdir = workdir or tempfile.mkdtemp(prefix="kubetrain-code-")
    os.makedirs(workdir, exist_ok=True)
    fd, local = tempfile.mkstemp(prefix="bundle-", suffix=".tar.gz")
    os.close(fd)
    try:
        try:
            _fetch(uri, local)
        except FileNotFoundError as e:
            raise UsageError(f"code bundle {uri} does not exist: {e}") from e
        except StorageError as e:
            raise StorageError(f"cannot read code bundle {uri}: {e}") from e
        except OSError as e:
            raise UsageError(f"cannot read code bundle {uri}: {e}") from e
        h = hashlib.sha256()
        with open(local, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if sha256 and h.hexdigest() != sha256:
            raise UsageError(f"code bundle {uri} has sha256 {h.hexdigest()[:16]}..., expected {sha256[:16]}...: "
                             "it changed since `launch` shipped it")
        try:
            with tarfile.open(local, "r:gz") as tar:
                members = safe_members(tar, workdir)
                tar.extractall(workdir, members=members)
        except tarfile.TarError as e:
            raise UsageError(f"code bundle {uri} is not a valid tar.gz: {e}") from e
    finally:
        os.unlink(local)
    return workdir
