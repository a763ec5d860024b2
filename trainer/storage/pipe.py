"""A bounded in-memory pipe between a serializing thread and an uploading one."""

from __future__ import annotations

import collections
import threading

from trainer.errors import StorageError

class Pipe:
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
