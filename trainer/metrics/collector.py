"""The supervisor's metrics, gathered when Prometheus scrapes: nothing runs in the supervisor's loop.

At each scrape the collector reads what the ranks already tell their supervisor through the control
folder (trainer/control_folder.py: Progress, Committed, RankStats), the supervisor's own restart
ledger record and stop requests, and this node's earlier ledger records (read once, in the
background, at start). Histograms and counters live in a private registry and take what is new
since the last scrape: each rank numbers its checkpoint events (RankStats keeps its newest 64, far
more than fit between two scrapes) and its storage error counts only grow. Gauges are computed
fresh. A scrape that fails to read something logs one line per distinct problem and serves the rest.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import signal
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trainer.contract import Attempt
from trainer.control_folder import Committed, Progress, RankStats
from trainer.metrics import ledger_view
from trainer.storage import error_counts

log = logging.getLogger("kubetrain.metrics")

STALL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
UPLOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
BYTES_BUCKETS = (1e6, 1e7, 1e8, 2.5e8, 5e8, 1e9, 2.5e9, 5e9, 1e10, 2.5e10, 1e11)
RESTORE_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RATE_WINDOW_S = 60.0  # the step rate is over the newest minute of progress seen (at least two scrapes)
HISTORY_LIMIT = 500  # this node's newest earlier attempts read for goodput and restarts
_SELF = -1  # the supervisor's own storage errors (ledger, lease, prefetch), beside its ranks'


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where the numbers come from: the control folder, and the supervisor's own state."""

    control: str
    run_id: str
    node_rank: int
    ledger: Any | None  # trainer.ledger_io.Ledger: .record, .previous, .max_restarts, .storage, .dir
    stop_requests: Callable[[], Sequence[str]]  # every stop asked for so far: signal names, cloud notices


def notice_source(reason: str) -> str:
    """The `source` label of a stop request: the signal's name, else "cloud" (a preemption notice)."""
    return reason if reason in signal.Signals.__members__ else "cloud"


class RuntimeCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self._lock = threading.Lock()  # one scrape at a time: the "new since" marks below
        r = self._registry = CollectorRegistry(auto_describe=True)
        self.stall = Histogram("kubetrain_checkpoint_stall_seconds", "Seconds a save held training up, per rank "
                               "(waiting for the previous upload, the snapshot; a blocking save's whole write)",
                               buckets=STALL_BUCKETS, registry=r)
        self.upload = Histogram("kubetrain_checkpoint_upload_seconds", "Seconds a rank spent writing its files of "
                                "one save (in the background unless the save blocks)", buckets=UPLOAD_BUCKETS,
                                registry=r)
        self.nbytes = Histogram("kubetrain_checkpoint_upload_bytes", "Bytes a rank wrote for one save",
                                buckets=BYTES_BUCKETS, registry=r)
        self.failures = Counter("kubetrain_checkpoint_failures", "Saves that did not commit (latest untouched), as "
                                "the node's first rank saw them", registry=r)
        self.restore = Histogram("kubetrain_restore_seconds", "Seconds from restore() to the state loaded on the "
                                 "node's first rank, by where it came from (checkpoint, warm-start, none)",
                                 ["source"], buckets=RESTORE_BUCKETS, registry=r)
        self.storage_errors = Counter("kubetrain_storage_errors", "Storage errors retried by this node's processes, "
                                      "by kind", ["kind"], registry=r)
        self.notices = Counter("kubetrain_preemption_notices", "Stop requests this supervisor received: SIGTERM, "
                               "SIGINT, or a cloud preemption notice", ["source"], registry=r)
        self._seen_seq: dict[int, int] = {}
        self._seen_errors: dict[int, dict[str, int]] = {}
        self._seen_notices = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=256)
        self._problems: set[str] = set()
        self._stats: dict[int, RankStats] = {}
        self._history: list[Attempt] | None = None  # this node's earlier attempts, once read
        if sources.ledger is not None and sources.ledger.record is not None:
            threading.Thread(target=self._read_history, name="kubetrain-metrics-ledger", daemon=True).start()

    # --- prometheus_client's interface -------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            for part in (self._absorb_ranks, self._absorb_notices, self._absorb_own_errors):
                self._guard(part)
            gauges = self._guard(self._gauges) or []
            yield from self._registry.collect()
            yield from gauges

    def _guard(self, part: Callable[[], Any]) -> Any:
        try:
            return part()
        except Exception as e:  # noqa: BLE001 - metrics never break the scrape, let alone the run
            problem = f"{part.__name__}: {type(e).__name__}: {e}"
            if problem not in self._problems:
                self._problems.add(problem)
                log.warning("metrics: %s (served without it)", problem)
            return None

    # --- new since the last scrape -------------------------------------------------------------

    def _absorb_ranks(self) -> None:
        self._stats = stats = RankStats.read_all(self.sources.control)  # this scrape's; _gauges reads it too
        first = min(stats) if stats else None
        for rank, s in stats.items():
            seen = self._seen_seq.get(rank, 0)
            if s.events and s.events[-1].seq < seen:
                seen = 0  # a new process for this rank: its events count from 1 again
            for e in s.events:
                if e.seq <= seen:
                    continue
                if e.kind == "save":
                    self.stall.observe(e.stall_s)
                    if e.ok:
                        self.upload.observe(e.upload_s)
                        self.nbytes.observe(e.bytes)
                    elif rank == first:
                        self.failures.inc()
                elif e.kind == "restore" and rank == first:
                    self.restore.labels(e.source or "none").observe(e.seconds)
            if s.events:
                self._seen_seq[rank] = s.events[-1].seq
            self._absorb_errors(rank, s.storage_errors)

    def _absorb_own_errors(self) -> None:
        self._absorb_errors(_SELF, error_counts.counts())

    def _absorb_errors(self, key: int, counts: dict[str, int]) -> None:
        before = self._seen_errors.get(key, {})
        for kind, n in counts.items():
            delta = n - before.get(kind, 0)
            if delta < 0:
                delta = n  # a new process: its counts start again
            if delta:
                self.storage_errors.labels(kind).inc(delta)
        self._seen_errors[key] = dict(counts)

    def _absorb_notices(self) -> None:
        stops = list(self.sources.stop_requests())
        for reason in stops[self._seen_notices:]:
            self.notices.labels(notice_source(reason)).inc()
        self._seen_notices = len(stops)

    # --- computed at each scrape ---------------------------------------------------------------

    def _gauges(self) -> list[Metric]:
        src = self.sources
        now = time.time()
        record = src.ledger.record if src.ledger is not None else None
        out = []
        info = GaugeMetricFamily("kubetrain_run_info", "This supervisor's run, node rank and restart-ledger attempt",
                                 labels=["run_id", "node_rank", "attempt"])
        info.add_metric([src.run_id, str(src.node_rank), record.name if record is not None else ""], 1)
        out.append(info)
        progress = Progress.read_all(src.control)
        if progress:
            newest = max(progress.values(), key=lambda p: (p.step, p.time))
            out.append(_gauge("kubetrain_step", "Newest step any of this node's ranks finished", newest.step))
            out.append(_gauge("kubetrain_last_progress_timestamp_seconds",
                              "When that step was reported (unix time)", newest.time))
            out.append(_gauge("kubetrain_step_rate", "Steps per second over the last minute of progress seen",
                              self._rate(newest.time, newest.step)))
        committed = self._last_committed(record)
        if committed is not None:
            out.append(_gauge("kubetrain_last_committed_step", "Newest committed step this node knows of "
                              "(the one a restart resumes from)", committed[0]))
            if committed[1] is not None:
                out.append(_gauge("kubetrain_last_committed_timestamp_seconds",
                                  "When this start committed that step (unix time); absent until it commits one",
                                  committed[1]))
        if record is not None:
            series = (self._history or []) + [record]
            if src.node_rank == 0:
                left = ledger_view.budget_left(list(src.ledger.previous) + [record], src.ledger.max_restarts)
                if left is not None:
                    out.append(_gauge("kubetrain_restart_budget_left", "Failed restarts in a row left before "
                                      "the run stops for good (exit 99); preemptions spend none", left))
            if self._history is not None:
                restarts = GaugeMetricFamily("kubetrain_restarts", "Earlier starts of this node that ended and "
                                             "were restarted, by cause and exit code (the restart ledger)",
                                             labels=["cause", "code"])
                for (cause, code), n in sorted(ledger_view.restarts_by_cause(series).items()):
                    restarts.add_metric([cause, code], n)
                out.append(restarts)
                value = ledger_view.goodput(series, now)
                if value is not None:
                    out.append(_gauge("kubetrain_goodput_ratio", "Time that ended in a committed step over the "
                                      "wall time since the run's first start (the restart ledger)", value))
        return out

    def _rate(self, t: float, step: int) -> float:
        s = self._samples
        if s and (step < s[-1][1]):
            s.clear()  # fewer steps than before: another start; its rate starts again
        if not s or s[-1][0] != t:
            s.append((t, step))
        if len(s) < 2:
            return 0.0
        window = [x for x in s if x[0] >= t - RATE_WINDOW_S]
        ref = window[0] if len(window) >= 2 else s[-2]
        return (step - ref[1]) / (t - ref[0]) if t > ref[0] else 0.0

    def _last_committed(self, record: Attempt | None) -> tuple[int, float | None] | None:
        """(step, when) of the newest commit: global rank 0's Committed, a rank's saved event, or the
        step this start resumed from (when None: not committed by this start)."""
        found: list[tuple[int, float | None]] = []
        c = Committed.read(self.sources.control)
        if c is not None:
            found.append((c.step, c.time))
        for s in self._stats.values():
            saves = [e for e in s.events if e.kind == "save" and e.ok and e.step is not None]
            if saves:
                found.append((saves[-1].step, saves[-1].time))
        if record is not None and record.resumed_from is not None:
            found.append((record.resumed_from, None))
        return max(found, key=lambda x: (x[0], x[1] is not None)) if found else None

    def _read_history(self) -> None:
        try:
            self._history = self.sources.ledger.history(HISTORY_LIMIT)
        except Exception as e:  # noqa: BLE001
            log.warning("metrics: the restart ledger could not be read (%s); no goodput or restarts served", e)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
