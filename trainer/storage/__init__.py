"""Checkpoint storage: any fsspec URI, with boto3's transfer manager for s3://.

    base          the Storage interface, FileInfo, hashing, join, spool_dir
    local         file:// and plain paths (temp file, fsync, rename)
    fsspec_store  any other fsspec protocol (memory://, gs://, az://, ...)
    s3            s3:// through boto3 (s3_errors classifies its errors, pipe streams uploads)
    retry         backoff for transient errors
    error_counts  the errors retried, by kind, for the runtime's /metrics

`open_storage(uri)` picks the backend; the checkpoint layer sees only `Storage`.
"""

from __future__ import annotations

import os

from trainer import contract
from trainer.errors import UsageError
from trainer.storage.base import CHUNK, FileInfo, HashingWriter, Storage, file_info, join, spool_dir
from trainer.storage.fsspec_store import FsspecStorage
from trainer.storage.local import LocalStorage
from trainer.storage.retry import ANY_BACKEND_ERROR, RETRY_ATTEMPTS, retry_call
from trainer.storage.s3 import S3_CONCURRENCY, S3_PART_SIZE, S3Storage
from trainer.storage.s3_errors import S3_PERMANENT_ERRORS, permanent_s3_message, s3_error_code, s3_error_kind

__all__ = ["ANY_BACKEND_ERROR", "CHUNK", "FileInfo", "FsspecStorage", "HashingWriter", "LocalStorage",
           "RETRY_ATTEMPTS", "S3Storage", "S3_CONCURRENCY", "S3_PART_SIZE", "S3_PERMANENT_ERRORS", "Storage",
           "file_info", "join", "open_storage", "permanent_s3_message", "retry_call", "s3_error_code",
           "s3_error_kind", "spool_dir"]


def open_storage(uri: str) -> Storage:
    """The storage backend for a checkpoint URI; UsageError names a bad one."""
    if not isinstance(uri, str):
        uri = ""
    if contract.is_local_uri(uri) and uri:
        return LocalStorage(os.path.abspath(contract.local_path(uri)))
    import fsspec

    # The launcher's rule, widened to whatever fsspec protocol this environment has installed.
    problem = contract.checkpoint_uri_problem(uri, contract.CHECKPOINT_SCHEMES | set(fsspec.available_protocols()))
    if problem:
        raise UsageError(problem)
    scheme = uri.split("://", 1)[0]
    if scheme in ("s3", "s3a"):
        if scheme == "s3a":
            uri = "s3" + uri[3:]
        return S3Storage(uri)
    try:
        return FsspecStorage(uri)
    except ImportError as e:
        raise UsageError(f"checkpoint URI {uri!r} needs a package that is not installed: {e}") from e
