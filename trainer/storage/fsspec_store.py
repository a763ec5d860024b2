"""Any fsspec protocol without a backend of its own (memory://, gs://, az://, ...)."""

from __future__ import annotations

import contextlib
import os
import tempfile

from trainer.storage.base import FileInfo, HashingWriter, Storage, spool_dir
from trainer.storage.retry import ANY_BACKEND_ERROR, retry_call

class FsspecStorage(Storage):
    """Any other fsspec protocol (memory://, gs://, az://, ...)."""

    def __init__(self, uri: str) -> None:
        import fsspec

        self.uri = uri
        self.fs, _ = fsspec.core.url_to_fs(uri)

    def write_file(self, path, write):
        def attempt() -> FileInfo:
            with self.fs.open(path, "wb") as raw:
                w = HashingWriter(raw)
                write(w)
            return w.info()

        return retry_call(attempt, what=f"upload {path}")

    @contextlib.contextmanager
    def fetch(self, path):
        fd, local = tempfile.mkstemp(dir=spool_dir(), prefix="fetch-")
        os.close(fd)
        try:
            retry_call(lambda: self.fs.get_file(path, local), what=f"download {path}", retry_on=ANY_BACKEND_ERROR)
            yield local
        finally:
            os.unlink(local)

    def write_small(self, path, data, *, before_replace=None):
        if before_replace is not None:
            before_replace()
        retry_call(lambda: self.fs.pipe_file(path, data), what=f"write {path}")

    def read_small(self, path):
        try:
            return retry_call(lambda: self.fs.cat_file(path), what=f"read {path}", retry_on=ANY_BACKEND_ERROR)
        except FileNotFoundError:
            return None

    def list_names(self, path):
        try:
            entries = retry_call(lambda: self.fs.ls(path, detail=False, refresh=True), what=f"list {path}",
                                 retry_on=ANY_BACKEND_ERROR)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def remove_tree(self, path):
        with contextlib.suppress(FileNotFoundError):
            retry_call(lambda: self.fs.rm(path, recursive=True), what=f"remove {path}")

    def remove(self, path):
        with contextlib.suppress(FileNotFoundError):
            retry_call(lambda: self.fs.rm_file(path), what=f"remove {path}")
