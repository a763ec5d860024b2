"""s3:// through boto3.

For s3:// the whole backend is boto3: bench/run.py (M3) measured s3fs's
put_file at 0.55-0.75 of boto3's transfer manager on the same bytes (see
BENCHMARKS.md), and one client keeps one retry policy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from typing import Callable, Iterator, TypeVar

from trainer.errors import StorageConfigError, UsageError
from trainer.storage.base import FileInfo, HashingWriter, Storage, spool_dir
from trainer.storage.pipe import Pipe
from trainer.storage.retry import retry_call
from trainer.storage.s3_errors import permanent_s3_message, s3_error_code, s3_error_kind

log = logging.getLogger("trainer.storage")
T = TypeVar("T")

#: Multipart part size and parallel parts for s3:// transfers (boto3 defaults: 8 MiB, 10).
S3_PART_SIZE = 16 << 20
S3_CONCURRENCY = 8

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
            pipe = Pipe(max_bytes=S3_PART_SIZE * 2)
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

    def remove(self, path):
        self._retry(lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(path)), f"remove {path}")

    def remove_tree(self, path):
        prefix = self._key(path).rstrip("/") + "/"
        keys = [o["Key"] for page in self._pages(prefix, None) for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True}
            self._retry(lambda: self.client.delete_objects(Bucket=self.bucket, Delete=batch), f"remove {path}")


    def abort_stale_uploads(self, path, started_before, exact=None):
        # A SIGKILL during a multipart upload leaves its parts billed until a lifecycle rule removes
        # them; the transfer manager aborts only the failures the process lives through.
        prefix = self._key(path).rstrip("/") + "/"
        listed, aborted = False, []
        for up in self._open_uploads(prefix, f"list incomplete uploads under {path}"):
            listed = True
            if up["Key"].startswith(prefix):
                aborted += self._abort_if_older(up, started_before)
        if listed or exact is None:
            return aborted
        # Nothing listed under the folder: none there, or a server that lists uploads only by exact
        # key. MinIO's ListMultipartUploads takes Prefix as one object's name and returns only that
        # key's uploads (tests/storage/test_upload_sweep.py shows it), so ask for each file a save
        # may have left open (the caller keeps that list short: one request each, 128 at most).
        for p in exact():
            key = self._key(p)
            for up in self._open_uploads(key, f"list incomplete uploads of {p}"):
                if up["Key"] == key:
                    aborted += self._abort_if_older(up, started_before)
        return aborted

    def _open_uploads(self, prefix: str, what: str) -> Iterator[dict]:
        """The incomplete multipart uploads the server lists for `prefix`, page after page."""
        kwargs: dict = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self._retry(lambda: self.client.list_multipart_uploads(**kwargs), what)
            yield from page.get("Uploads", [])
            if not page.get("IsTruncated"):
                return
            kwargs.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])

    def _abort_if_older(self, up: dict, started_before: float) -> list[str]:
        """Abort the upload `up` when it began before `started_before` (not this attempt's); [key] or []."""
        if up["Initiated"].timestamp() >= started_before:
            return []
        self._retry(lambda: self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"],
                                                               UploadId=up["UploadId"]), f"abort upload of {up['Key']}")
        return [up["Key"]]


def _missing(error) -> bool:
    """Whether a botocore ClientError says the object does not exist."""
    return s3_error_kind(s3_error_code(error)) == "missing"
