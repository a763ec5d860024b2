"""file:// and plain paths: writes go to a temp name, fsync, then rename."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil

from trainer import contract
from trainer.storage.base import HashingWriter, Storage


class LocalStorage(Storage):
    """file:// and plain paths. Writes go to a temp name, fsync, then rename."""

    is_local = True

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = contract.local_path(uri)

    def _local(self, path: str) -> str:
        return contract.local_path(path)

    def write_file(self, path, write):
        local = self._local(path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = _temp_name(local)
        try:
            with open(tmp, "wb") as raw:
                w = HashingWriter(raw)
                write(w)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, local)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return w.info()

    @contextlib.contextmanager
    def fetch(self, path):
        local = self._local(path)
        if not os.path.exists(local):
            raise FileNotFoundError(path)
        yield local

    def write_small(self, path, data, *, before_replace=None):
        local = self._local(path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = _temp_name(local)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, local)
        _fsync_dir(os.path.dirname(local))

    def remove_leftover_temps(self, path, *, recursive=False):
        root = self._local(path)
        walk = os.walk(root) if recursive else [next(os.walk(root), (root, [], []))]
        removed = []
        for dirpath, _, files in walk:
            for name in files:
                if _TEMP_RE.search(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(dirpath, name))
                        removed.append(os.path.join(dirpath, name))
        return removed

    def read_small(self, path):
        try:
            with open(self._local(path), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def list_names(self, path):
        try:
            return sorted(os.listdir(self._local(path)))
        except FileNotFoundError:
            return []

    def remove_tree(self, path):
        shutil.rmtree(self._local(path), ignore_errors=True)

    def remove(self, path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._local(path))


#: What `_temp_name` appends; `remove_leftover_temps` finds a kill's leftovers by it.
_TEMP_RE = re.compile(r"\.tmp-\d+(-\d+)?$")  # older versions wrote <name>.tmp-<pid>
_WRITES = itertools.count()


def _temp_name(local: str) -> str:
    """Where a write to `local` is staged before its rename: `<name>.tmp-<pid>-<n>`, unique per write, so two
    writers never share one, not even two threads of one process (the ledger's) writing the same object."""
    return f"{local}.tmp-{os.getpid()}-{next(_WRITES)}"


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
