"""Checkpoint storage: any fsspec URI, with boto3's transfer manager for s3://.

Paths are `str`, never `Path`: `Path` turns `s3://b/k` into `s3:/b/k`.

Large files (the shards) go through `write_file`, which hashes the bytes as
they are written so the manifest's checksums cost no second pass, and
`fetch`, which gives the checkpoint layer a local copy to verify. Small files
(manifest, `latest`) go through `write_small` / `read_small`, which replace
the object atomically.

For s3:// the whole backend is boto3: bench/run.py (M3) measured s3fs's
put_file at 0.55-0.75 of boto3's transfer manager on the same bytes (see
BENCHMARKS.md), and one client keeps one retry policy. Everything else goes
through fsspec.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import re
from typing import BinaryIO, Callable, Iterator, Literal, TypeVar

from trainer import contract
from trainer.errors import StorageConfigError, StorageError, UsageError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Bytes per hashing read.
CHUNK = 8 << 20
#: Multipart part size and parallel parts for s3:// transfers (boto3 defaults: 8 MiB, 10).
S3_PART_SIZE = 16 << 20
S3_CONCURRENCY = 8
RETRY_ATTEMPTS = 6


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

ErrorKind = Literal["missing", "permanent", "transient"]

#: S3 error codes that no retry fixes, and what to do about each. A typo in a bucket name or a
#: wrong secret restarted a job forever under an operator that does not enforce backoffLimit.
S3_PERMANENT_ERRORS: dict[str, str] = {
    "NoSuchBucket": "the bucket does not exist: create it, or fix the bucket name in --checkpoint",
    "InvalidBucketName": "the bucket name is invalid: fix it in --checkpoint",
    "InvalidAccessKeyId": "the access key is unknown to the object store: fix AWS_ACCESS_KEY_ID "
                          "(or the credentials Secret the pod reads)",
    "SignatureDoesNotMatch": "the secret key is wrong for this access key: fix AWS_SECRET_ACCESS_KEY "
                             "(or the credentials Secret the pod reads)",
    "AccessDenied": "these credentials may not use the bucket: grant s3:GetObject, s3:PutObject, "
                    "s3:ListBucket and s3:DeleteObject on it",
    "AllAccessDisabled": "all access to the bucket is disabled: use another bucket",
    "AccountProblem": "the account behind these credentials cannot use S3: fix the account",
    # A HEAD request has no body, so a refusal arrives as a bare status.
    "403": "these credentials are refused (HTTP 403): check the key, the secret and the bucket policy",
}
_S3_MISSING = ("404", "NoSuchKey", "NotFound")
_BOTO_MESSAGE_CODE = re.compile(r"An error occurred \((\w+)\)")


def s3_error_code(exc: BaseException) -> str | None:
    """The S3 error code an exception carries: botocore's ClientError has it in its response;
    boto3's transfer manager re-raises it as S3UploadFailedError with only the message left."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    m = _BOTO_MESSAGE_CODE.search(str(exc))
    return m.group(1) if m else None


def s3_error_kind(code: str | None) -> ErrorKind:
    """missing (the object is not there: a fact), permanent (configuration: exit 2), or transient
    (throttling, 5xx, timeouts, resets and anything unknown: retry)."""
    if code in _S3_MISSING:
        return "missing"
    if code in S3_PERMANENT_ERRORS:
        return "permanent"
    return "transient"


def permanent_s3_message(code: str, bucket: str) -> str:
    """One line for the log and the exit: what the store said, about which bucket, and the fix."""
    return f"checkpoint bucket s3://{bucket}: {code}: {S3_PERMANENT_ERRORS[code]}"


#: Jitter for retries from a generator of its own: the process-wide `random` is part of the
#: user's state that checkpoints save and restore, and a retry must not advance it.
_JITTER = random.Random()
#: Errors of our own code, never of a store: a retry cannot help and must not hide them.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, AssertionError)
#: What a store's client may raise for a transient failure. fsspec backends do not all raise
#: OSError for one (gcsfs' HttpError and adlfs' HttpResponseError are plain Exceptions), and a
#: read error taken for a verdict on the step walked restores back through retained steps.
ANY_BACKEND_ERROR: tuple[type[BaseException], ...] = (Exception,)


def retry_call(fn: Callable[[], T], *, what: str, attempts: int = RETRY_ATTEMPTS,
               retry_on: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)) -> T:
    """Call fn, retrying transient I/O errors with exponential backoff and jitter."""
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (FileNotFoundError, StorageConfigError, *_PROGRAMMING_ERRORS):
            raise  # a fact about the object, a configuration error or a bug: a retry changes none
        except retry_on as e:
            if attempt == attempts:
                raise StorageError(f"{what} failed after {attempts} attempts: {e}") from e
            log.warning("%s failed (%s); retrying in %.1fs (%d/%d)", what, e, delay, attempt, attempts)
            time.sleep(delay * (0.5 + _JITTER.random()))
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


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

    def sizes(self, path: str) -> dict[str, int]:
        """Size of every file under the folder `path`, by path relative to it."""
        raise NotImplementedError

    def remove_tree(self, path: str) -> None:
        raise NotImplementedError

    def remove(self, path: str) -> None:
        """Delete one file; a missing one is not an error."""
        raise NotImplementedError

    def remove_leftover_temps(self, path: str, *, recursive: bool = False) -> list[str]:
        """Remove the temp files (`<name>.tmp-<pid>`) that writes cut short by a kill left in the folder
        `path` (and below it with `recursive`); their paths. Only a folder has them: an object store's
        put is atomic. The caller makes sure nothing is writing there now."""
        return []

    def abort_stale_uploads(self, path: str, started_before: float) -> list[str]:
        """Abort incomplete multipart uploads under the folder `path` begun before `started_before`
        (Unix time); the keys aborted. Only object stores have them."""
        return []


class LocalStorage(Storage):
    """file:// and plain paths. Writes go to a temp name, fsync, then rename."""

    is_local = True

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = uri[len("file://"):] if uri.startswith("file://") else uri

    def _local(self, path: str) -> str:
        return path[len("file://"):] if path.startswith("file://") else path

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

    def sizes(self, path):
        root = self._local(path)
        out = {}
        for dirpath, _, files in os.walk(root):
            for name in files:
                full = os.path.join(dirpath, name)
                out[os.path.relpath(full, root)] = os.path.getsize(full)
        return out

    def remove_tree(self, path):
        shutil.rmtree(self._local(path), ignore_errors=True)

    def remove(self, path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._local(path))


#: What `_temp_name` appends; `remove_leftover_temps` finds a kill's leftovers by it.
_TEMP_RE = re.compile(r"\.tmp-\d+$")


def _temp_name(local: str) -> str:
    """Where a write to `local` is staged before its rename: per process, so two writers never share one."""
    return f"{local}.tmp-{os.getpid()}"


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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

    def sizes(self, path):
        try:
            found = retry_call(lambda: self.fs.find(path, detail=True), what=f"list {path}",
                               retry_on=ANY_BACKEND_ERROR)
        except FileNotFoundError:
            return {}
        prefix = self.fs._strip_protocol(path).rstrip("/") + "/"
        return {k[len(prefix):]: int(v["size"]) for k, v in found.items() if k.startswith(prefix)}

    def remove_tree(self, path):
        with contextlib.suppress(FileNotFoundError):
            retry_call(lambda: self.fs.rm(path, recursive=True), what=f"remove {path}")

    def remove(self, path):
        with contextlib.suppress(FileNotFoundError):
            retry_call(lambda: self.fs.rm_file(path), what=f"remove {path}")


class S3Storage(Storage):
    """s3:// through boto3: transfer manager for shards, put_object for the rest.

    Credentials and the endpoint come from the standard AWS chain and env
    (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 included) and are never logged.
    Throttling (503 SlowDown), 5xx and connection resets are retried by
    botocore's standard retry mode; a whole transfer that still fails is
    retried by `retry_call`, and a failed multipart upload is aborted by the
    transfer manager, so no partial object is ever visible.
    """

    def __init__(self, uri: str) -> None:
        import boto3
        import botocore.config
        from boto3.s3.transfer import TransferConfig

        self.uri = uri
        rest = uri[len("s3://"):]
        self.bucket = rest.split("/", 1)[0]
        if not self.bucket:
            raise UsageError(f"checkpoint URI {uri!r} has no bucket; use s3://BUCKET/PREFIX")
        # The standard AWS_RETRY_MODE / AWS_MAX_ATTEMPTS variables still win over our defaults.
        config = botocore.config.Config(
            retries={"mode": os.environ.get("AWS_RETRY_MODE") or "standard",
                     "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS") or 8)},
            max_pool_connections=max(10, S3_CONCURRENCY * 2),
            connect_timeout=10,
            read_timeout=60,
        )
        self.client = boto3.session.Session().client("s3", config=config)
        # botocore retries each request silently; a 20 s outage left no trace but a slow commit.
        self._last_retry_log = 0.0
        self.client.meta.events.register_first("needs-retry.s3", self._log_retry)
        self.transfer = TransferConfig(
            multipart_threshold=S3_PART_SIZE,
            multipart_chunksize=S3_PART_SIZE,
            max_concurrency=S3_CONCURRENCY,
            use_threads=True,
        )
        import botocore.exceptions as bex

        self._transient = (bex.BotoCoreError, bex.ClientError, OSError)

    #: At most one "botocore is retrying" line per this many seconds per client: an outage is one story.
    RETRY_LOG_EVERY_S = 5.0

    def _log_retry(self, response=None, attempts: int = 0, caught_exception=None, operation=None,
                   request_dict=None, **_: object) -> None:
        """A needs-retry hook that only logs: it returns None, so botocore's own handler decides."""
        status = response[0].status_code if response is not None else None
        if caught_exception is None and (status is None or status < 500) and status != 429:
            return
        now = time.monotonic()
        if now - self._last_retry_log < self.RETRY_LOG_EVERY_S:
            return
        self._last_retry_log = now
        code = (response[1].get("Error", {}).get("Code") if response is not None else None) or status
        why = f"{type(caught_exception).__name__}" if caught_exception is not None else f"HTTP {status} {code}"
        name = getattr(operation, "name", "request")
        log.warning("s3://%s: %s failed (%s, attempt %d); retrying with backoff", self.bucket, name, why, attempts)

    def _key(self, path: str) -> str:
        if not path.startswith(f"s3://{self.bucket}"):
            raise ValueError(f"{path} is outside s3://{self.bucket}")
        return path[len(f"s3://{self.bucket}"):].lstrip("/")

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        # botocore already retried each request; this repeats a whole transfer a few times.
        def classified() -> T:
            try:
                return fn()
            except Exception as e:
                code = s3_error_code(e)
                if code is not None and s3_error_kind(code) == "permanent":
                    raise StorageConfigError(permanent_s3_message(code, self.bucket)) from e
                raise

        return retry_call(classified, what=what, retry_on=self._transient, attempts=3)

    def write_file(self, path, write):
        # Serialization streams straight into the multipart upload: no spool
        # file, and the upload overlaps torch.save instead of following it
        # (bench/run.py M3: a spool file cost about a third of the throughput
        # of boto3's own upload_file on the same bytes).
        def attempt() -> FileInfo:
            pipe = _Pipe(max_bytes=S3_PART_SIZE * 2)
            info: list[FileInfo] = []

            def produce() -> None:
                try:
                    w = HashingWriter(pipe)
                    write(w)
                    info.append(w.info())
                    pipe.close()
                except BaseException as e:  # the reader raises it in the upload
                    pipe.fail(e)

            producer = threading.Thread(target=produce, name="kubetrain-serialize", daemon=True)
            producer.start()
            try:
                self.client.upload_fileobj(pipe, self.bucket, self._key(path), Config=self.transfer)
            finally:
                pipe.cancel()
                producer.join()
            return info[0]

        return self._retry(attempt, f"upload {path}")

    @contextlib.contextmanager
    def fetch(self, path):
        fd, local = tempfile.mkstemp(dir=spool_dir(), prefix="fetch-")
        os.close(fd)
        try:
            self._retry(lambda: self._download(path, local), f"download {path}")
            yield local
        finally:
            os.unlink(local)

    def _download(self, path: str, local: str) -> None:
        import botocore.exceptions as bex

        try:
            self.client.download_file(self.bucket, self._key(path), local, Config=self.transfer)
        except bex.ClientError as e:
            if _missing(e):
                raise FileNotFoundError(path) from e
            raise

    def write_small(self, path, data, *, before_replace=None):
        if before_replace is not None:
            before_replace()
        self._retry(lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data),
                    f"write {path}")

    def read_small(self, path):
        import botocore.exceptions as bex

        def get() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"].read()
            except bex.ClientError as e:
                if _missing(e):
                    return None
                raise

        return self._retry(get, f"read {path}")

    def _pages(self, prefix: str, delimiter: str | None) -> Iterator[dict]:
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        token = None
        while True:
            if token:
                kwargs["ContinuationToken"] = token
            page = self._retry(lambda: self.client.list_objects_v2(**kwargs), f"list s3://{self.bucket}/{prefix}")
            yield page
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def list_names(self, path):
        prefix = self._key(path).rstrip("/") + "/"
        names = set()
        for page in self._pages(prefix, "/"):
            names.update(p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", []))
            names.update(o["Key"][len(prefix):] for o in page.get("Contents", []))
        return sorted(n for n in names if n)

    def sizes(self, path):
        prefix = self._key(path).rstrip("/") + "/"
        return {o["Key"][len(prefix):]: int(o["Size"])
                for page in self._pages(prefix, None) for o in page.get("Contents", [])}

    def remove(self, path):
        self._retry(lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(path)), f"remove {path}")

    def remove_tree(self, path):
        prefix = self._key(path).rstrip("/") + "/"
        keys = [o["Key"] for page in self._pages(prefix, None) for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True}
            self._retry(lambda: self.client.delete_objects(Bucket=self.bucket, Delete=batch), f"remove {path}")


    def abort_stale_uploads(self, path, started_before):
        # A SIGKILL during a multipart upload leaves its parts billed until a lifecycle rule removes
        # them; the transfer manager aborts only the failures the process lives through.
        prefix = self._key(path).rstrip("/") + "/"
        aborted = []
        kwargs: dict = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self._retry(lambda: self.client.list_multipart_uploads(**kwargs),
                               f"list incomplete uploads under {path}")
            for up in page.get("Uploads", []):
                if up["Key"].startswith(prefix) and up["Initiated"].timestamp() < started_before:
                    self._retry(lambda up=up: self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]), f"abort upload of {up['Key']}")
                    aborted.append(up["Key"])
            if not page.get("IsTruncated"):
                return aborted
            kwargs.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])


def _missing(error) -> bool:
    """Whether a botocore ClientError says the object does not exist."""
    return s3_error_kind(s3_error_code(error)) == "missing"


class _Pipe:
    """A bounded in-memory pipe: torch.save writes on one thread, boto3 reads on another.

    At most `max_bytes` wait in it (plus one write), so a save never holds a
    second copy of the whole state. `fail` passes the writer's exception to
    the reader; `cancel` unblocks the writer when the reader gives up.
    """

    def __init__(self, max_bytes: int) -> None:
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._size = 0
        self._max = max_bytes
        self._cond = threading.Condition()
        self._closed = False
        self._cancelled = False
        self._error: BaseException | None = None

    def write(self, data) -> int:
        chunk = memoryview(bytes(data))  # a copy: the caller may reuse its buffer
        with self._cond:
            while self._size >= self._max and not self._cancelled:
                self._cond.wait()
            if self._cancelled:
                raise StorageError("upload aborted")
            self._chunks.append(chunk)
            self._size += len(chunk)
            self._cond.notify_all()
        return len(chunk)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self._error, self._closed = error, True
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def read(self, n: int = -1) -> bytes | bytearray:
        """Exactly n bytes unless the stream ends first (S3 rejects short middle parts)."""
        parts: list[memoryview] = []
        got = 0
        with self._cond:
            while n < 0 or got < n:
                while not self._chunks and not self._closed:
                    self._cond.wait()
                if self._error is not None:
                    raise StorageError(f"serializing the checkpoint failed: {self._error}") from self._error
                if not self._chunks:
                    break
                chunk = self._chunks.popleft()
                take = len(chunk) if n < 0 else min(len(chunk), n - got)
                parts.append(chunk[:take])
                if take < len(chunk):
                    self._chunks.appendleft(chunk[take:])
                got += take
                self._size -= take
                self._cond.notify_all()
        if len(parts) == 1:
            return parts[0].tobytes()
        out = bytearray(got)
        pos = 0
        for part in parts:
            out[pos:pos + len(part)] = part
            pos += len(part)
        return out


is_local_uri = contract.is_local_uri  # the one rule, shared with the launcher


def open_storage(uri: str) -> Storage:
    """The storage backend for a checkpoint URI; UsageError names a bad one."""
    if not isinstance(uri, str):
        uri = ""
    if is_local_uri(uri) and uri:
        return LocalStorage(os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri))
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
