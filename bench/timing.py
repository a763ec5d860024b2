"""Wall-clock timing for the metrics."""

from __future__ import annotations

import statistics
import time
from typing import Callable

MiB = 1 << 20


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of fn takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_time(fn: Callable[[], object], n: int) -> float:
    """Median seconds over n calls of fn: on a shared machine the middle is steadier than the mean or the best."""
    return statistics.median(timed(fn) for _ in range(n))
