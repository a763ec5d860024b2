"""Retries of a storage call: exponential backoff with jitter, never for a fact or a bug."""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

from trainer.errors import StorageConfigError, StorageError
from trainer.storage import error_counts

log = logging.getLogger("trainer.storage")
T = TypeVar("T")

RETRY_ATTEMPTS = 6

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
            error_counts.note(e)
            if attempt == attempts:
                raise StorageError(f"{what} failed after {attempts} attempts: {e}") from e
            log.warning("%s failed (%s); retrying in %.1fs (%d/%d)", what, e, delay, attempt, attempts)
            time.sleep(delay * (0.5 + _JITTER.random()))
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")
