"""The launcher's one door to the object store (fsspec, boto3), as launcher/k8s/ is to the cluster.

Every call opens a fresh filesystem (`skip_instance_cache`): fsspec's cached one was made with
the endpoint and credentials of the environment at its first use in this process, which may
not be this call's (seen in tests). fsspec and boto3 are imported lazily: `import launcher`
loads neither. Callers get plain values and say what failed in their own words.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping


def _fs(uri: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(uri, skip_instance_cache=True)


def read_json_objects(folder: str) -> dict[str, bytes | None]:
    """{name: bytes} of the folder's *.json objects (None: could not read that one); {} for no folder.

    Raises what fsspec raises for anything else (no credentials, no bucket)."""
    fs, root = _fs(folder)
    try:
        names = [n for n in fs.ls(root, detail=False) if n.endswith(".json")]
    except FileNotFoundError:
        return {}
    got = fs.cat(names, on_error="return") if names else {}
    return {n.rsplit("/", 1)[-1]: (v if isinstance(v, bytes) else None) for n, v in got.items()}


def write(uri: str, data: bytes) -> None:
    """Write one object whole; raises what fsspec raises."""
    import fsspec

    with fsspec.open(uri, "wb", skip_instance_cache=True) as f:
        f.write(data)


def remove(uri: str) -> None:
    """Delete one object; raises what fsspec raises."""
    fs, path = _fs(uri)
    fs.rm_file(path)


def lifecycle_rules(bucket: str, client: Any = None) -> list[dict] | None:
    """An S3 bucket's lifecycle rules ([] for none); None when they cannot be read (no permission, no network)."""
    try:
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("s3", config=Config(connect_timeout=3, read_timeout=5,
                                                      retries={"max_attempts": 2, "mode": "standard"}))
        return list(client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", []))
    except Exception as e:
        code = (getattr(e, "response", None) or {}).get("Error", {}).get("Code")
        if code == "NoSuchLifecycleConfiguration":
            return []
        return None


class BoundedRead:
    """`read(path)` in a thread of its own, so it overlaps other reads; `result()` waits at most `timeout` in all.

    A bucket that does not answer, or credentials that take long to find, never hold the caller up longer.
    """

    def __init__(self, path: str, read: Callable[[str], Mapping[str, bytes | None]] = read_json_objects,
                 timeout: float = 5.0) -> None:
        self.path, self.timeout = path, timeout
        self._read, self._deadline = read, time.monotonic() + timeout
        self._out: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._out["objects"] = dict(self._read(self.path))
        except BaseException as e:  # noqa: BLE001 — the caller says what it means; never its end
            self._out["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"[:160]

    def result(self) -> tuple[dict[str, bytes | None] | None, str | None]:
        """(objects, None); (None, "the error") when the read failed; (None, None) when it did not end in time."""
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        if "objects" in self._out:
            return self._out["objects"], None
        return None, self._out.get("error")
