"""Storage errors this process met, by kind: what the runtime's /metrics counts (trainer/metrics/).

Every transient error a store returned is noted where it is retried (retry_call, restore's own
retry loop), so one outage of 10 retried requests counts 10. The counts are per process and only
grow; a rank writes them into its control-folder stats record and its supervisor adds them up.
Standard library only, and never raises: bookkeeping must not change what a retry does.
"""

from __future__ import annotations

import threading

from trainer.errors import StorageConfigError

#: The kinds, in the order the README lists them.
KINDS = ("throttled", "server", "timeout", "connection", "config", "other")

_lock = threading.Lock()
_counts: dict[str, int] = {}


def error_kind(exc: BaseException) -> str:
    """One of KINDS for an exception a storage call raised (pure)."""
    if isinstance(exc, StorageConfigError):
        return "config"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "connection"
    text = f"{type(exc).__name__} {exc}"
    if any(word in text for word in ("SlowDown", "Throttl", "TooManyRequests", "429", "RequestLimitExceeded")):
        return "throttled"
    if any(word in text for word in ("InternalError", "ServiceUnavailable", "500", "502", "503", "504")):
        return "server"
    if "timed out" in text.lower() or "Timeout" in text:
        return "timeout"
    if any(word in text for word in ("reset", "Connection", "EndpointConnectionError", "BrokenPipe")):
        return "connection"
    return "other"


def note(exc: BaseException) -> None:
    """Count one storage error of `exc`'s kind."""
    try:
        kind = error_kind(exc)
        with _lock:
            _counts[kind] = _counts.get(kind, 0) + 1
    except Exception:  # noqa: BLE001 - never let the count change the retry
        pass


def counts() -> dict[str, int]:
    """{kind: errors so far} of this process."""
    with _lock:
        return dict(_counts)
