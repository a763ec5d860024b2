"""Node 0's progress in its TrainJob's status: Kubeflow Trainer v2.3's TrainJobStatus endpoint.

Where the Trainer controller runs with its TrainJobStatus feature gate on, its `trainjobstatus`
plugin gives every trainer container the endpoint's URL, CA file and a projected service account
token file (contract.TRAINER_STATUS_ENV). Node 0's supervisor then posts, at most every
--trainjob-status-seconds and only when something moved, what it already knows from its control
folder and restart ledger: the step, the total the script declared (Checkpointer(total_steps=N)),
the last committed step, goodput and an ETA. The Trainer applies it to `status.trainerStatus`.

    Endpoint.from_env   the three variables, or None: gate off, nothing posted and nothing logged
    RateWindow          steps per second over the newest minute of progress
    Facts, body         what is known -> the JSON the status server decodes (pure)
    post                one POST: the token read from its file each time (it rotates), the CA file, short timeout
    Poster              the daemon thread: one log line when posting starts failing, one when it recovers

The wire format, as kubeflow/trainer v2.3.0 defines it: pkg/statusserver/server.go (POST, bearer token,
a JSON UpdateTrainJobStatusRequest; 200, or a metav1.Status on error) and pkg/apis/trainer/v1alpha1/
trainjob_types.go (TrainerStatus: progressPercentage 0-100, estimatedRemainingSeconds >= 0, metrics
[{name, value}] with strings of 1-64 characters, lastUpdatedTime required). Nothing here may raise into
the supervisor or hold it up: posting is bookkeeping, training is the job.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, Sequence

from trainer import contract
from trainer.contract import Attempt
from trainer.control_folder import Committed, Progress, TotalSteps
from trainer.errors import one_line

log = logging.getLogger("kubetrain.trainjob_status")

POST_TIMEOUT_S = 5.0  # the server's own read timeout is 10 s; a slow endpoint costs the poster, never training
FINAL_TIMEOUT_S = 2.0  # the last post at a clean finish: the supervisor's exit waits this long at most
RATE_WINDOW_S = 60.0
HISTORY_LIMIT = 500  # node 0's newest earlier attempts read once, for goodput
INT32_MAX = 2 ** 31 - 1  # the fields are int32


@dataclasses.dataclass(frozen=True)
class Endpoint:
    url: str
    ca_path: str
    token_path: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Endpoint | None:
        """The endpoint when all three variables are set; None otherwise (one warning when only some are)."""
        values = [env.get(name) or "" for name in contract.TRAINER_STATUS_ENV]
        if all(values):
            return cls(*values)
        if any(values):
            missing = [n for n, v in zip(contract.TRAINER_STATUS_ENV, values) if not v]
            log.warning("trainjob status: %s not set; progress is not posted", ", ".join(missing))
        return None


class RateWindow:
    """Steps per second over the newest RATE_WINDOW_S of (time, step) samples; a step that goes back
    (an in-place restart resumed from an earlier commit) starts the window again."""

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=256)

    def add(self, t: float, step: int) -> float | None:
        s = self._samples
        if s and step < s[-1][1]:
            s.clear()
        if not s or s[-1][0] != t:
            s.append((t, step))
        window = [x for x in s if x[0] >= t - RATE_WINDOW_S]
        ref = window[0] if len(window) >= 2 else (s[-2] if len(s) >= 2 else None)
        if ref is None or t <= ref[0]:
            return None
        return (step - ref[1]) / (t - ref[0])


@dataclasses.dataclass(frozen=True)
class Facts:
    """What node 0 knows at one moment; None: not known (yet)."""

    step: int | None  # the newest step node 0's ranks finished
    total: int | None  # declared by the script
    committed: int | None  # the newest committed step: the one a restart resumes from
    goodput: float | None  # the restart ledger's: time that ended in a commit over wall time
    rate: float | None  # steps per second

    def moved(self, other: Facts | None) -> bool:
        """Whether this is worth a post after `other` (the last one posted): the step, total or commit changed."""
        return other is None or (self.step, self.total, self.committed) != (other.step, other.total, other.committed)


def eta_seconds(step: int | None, total: int | None, rate: float | None) -> int | None:
    """Seconds left at `rate` steps/s: 0 once the total is reached; None when the total or a rate is unknown."""
    if total is None or step is None:
        return None
    left = total - step
    if left <= 0:
        return 0
    if not rate or rate <= 0:
        return None
    return min(INT32_MAX, round(left / rate))


def percentage(step: int | None, total: int | None) -> int | None:
    if total is None or total <= 0:
        return None
    return max(0, min(100, (step or 0) * 100 // total))


def rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def body(facts: Facts, now: float) -> dict[str, Any]:
    """The UpdateTrainJobStatusRequest for `facts` (pure)."""
    status: dict[str, Any] = {}
    pct = percentage(facts.step, facts.total)
    if pct is not None:
        status["progressPercentage"] = pct
    eta = eta_seconds(facts.step, facts.total, facts.rate)
    if eta is not None:
        status["estimatedRemainingSeconds"] = eta
    metrics = [(name, value) for name, value in (
        ("step", facts.step), ("total_steps", facts.total), ("last_committed_step", facts.committed),
        ("goodput", None if facts.goodput is None else f"{facts.goodput:.3f}"),
        ("steps_per_second", None if facts.rate is None else f"{facts.rate:.4g}")) if value is not None]
    if metrics:
        status["metrics"] = [{"name": name, "value": str(value)} for name, value in metrics]
    status["lastUpdatedTime"] = rfc3339(now)
    return {"trainerStatus": status}


def goodput(series: Sequence[Attempt], now: float) -> float | None:
    return contract.summarize_ledger(series, now, node_rank=0).goodput if series else None


def read_facts(control: str, rate: RateWindow, series: Callable[[], Sequence[Attempt]], now: float) -> Facts:
    """Facts from node 0's control folder (its ranks' progress, global rank 0's commits and declared
    total) and its restart ledger (`series`: node 0's attempts, this one last)."""
    progress = Progress.read_all(control)
    newest = max(progress.values(), key=lambda p: (p.step, p.time)) if progress else None
    attempts = list(series())
    committed = [c.step] if (c := Committed.read(control)) is not None else []
    if attempts and attempts[-1].resumed_from is not None:
        committed.append(attempts[-1].resumed_from)
    total = TotalSteps.read(control)
    return Facts(step=newest.step if newest else None, total=total.steps if total else None,
                 committed=max(committed) if committed else None, goodput=goodput(attempts, now),
                 rate=rate.add(newest.time, newest.step) if newest else None)


def post(endpoint: Endpoint, doc: Mapping[str, Any], timeout: float) -> str | None:
    """POST `doc`; None when the server took it, else why not in one line. Never raises."""
    try:
        with open(endpoint.token_path) as f:  # re-read each time: the projected token rotates
            token = f.read().strip()
        # The CA file per post too (the Trainer rotates its certificates); straight to the endpoint, never
        # through an HTTPS_PROXY: it is a Service inside the cluster.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=endpoint.ca_path)))
        request = urllib.request.Request(endpoint.url, data=json.dumps(doc).encode(), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {token}"})
        with opener.open(request, timeout=timeout) as r:
            r.read()
        return None
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {_status_message(e)}"
    except urllib.error.URLError as e:
        return one_line(str(e.reason))
    except Exception as e:  # noqa: BLE001 - a timeout, a bad CA file, a missing token: all one outage
        return one_line(f"{type(e).__name__}: {e}")


def _status_message(e: urllib.error.HTTPError) -> str:
    """The message of the metav1.Status the server answers an error with, else the reason phrase."""
    try:
        return str(json.loads(e.read(4096)).get("message") or e.reason)
    except Exception:  # noqa: BLE001
        return str(e.reason)


class Poster:
    """Posts `facts()` every `interval` seconds when they moved, on a daemon thread of its own."""

    def __init__(self, endpoint: Endpoint, interval: float, facts: Callable[[float], Facts], *,
                 timeout: float = POST_TIMEOUT_S, prepare: Callable[[], None] | None = None) -> None:
        self.endpoint, self.interval = endpoint, max(interval, contract.TRAINJOB_STATUS_MIN_SECONDS)
        self.timeout = min(timeout, self.interval)
        self._facts, self._prepare = facts, prepare
        self._stop = threading.Event()
        self._final = False
        self._last: Facts | None = None
        self.posted = 0  # posts the server took
        self.failed = 0  # posts it did not, in all
        self._failing_since: float | None = None
        self._failing = 0
        self._thread = threading.Thread(target=self._run, name="kubetrain-trainjob-status", daemon=True)

    def start(self) -> Poster:
        self._thread.start()
        return self

    def close(self, final: bool) -> None:
        """Stop; with `final` (a clean finish), post the last facts first unless the endpoint is failing."""
        self._final = final
        self._stop.set()
        self._thread.join(FINAL_TIMEOUT_S + 0.5 if final else 0)

    def _run(self) -> None:
        if self._prepare is not None:
            self._guard(self._prepare)
        while not self._stop.wait(self.interval):
            self._guard(self._tick)
        if self._final and self._failing_since is None:
            self._guard(lambda: self._tick(FINAL_TIMEOUT_S))

    def _guard(self, part: Callable[[], None]) -> None:
        try:
            part()
        except Exception as e:  # noqa: BLE001 - never into the supervisor
            log.debug("trainjob status: %s", e)

    def _tick(self, timeout: float | None = None) -> None:
        now = time.time()
        facts = self._facts(now)
        if not facts.moved(self._last):
            return
        problem = post(self.endpoint, body(facts, now), self.timeout if timeout is None else timeout)
        if problem is None:
            self.posted += 1
            self._last = facts
            if self._failing_since is not None:
                log.info("trainjob status: posting again after %d failed post(s) over %.0f s", self._failing,
                         now - self._failing_since)
                self._failing_since, self._failing = None, 0
            return
        self.failed += 1
        self._failing += 1
        if self._failing_since is None:
            self._failing_since = now
            log.warning("trainjob status: cannot post progress to %s (%s); training goes on, retrying every %g s",
                        self.endpoint.url, problem, self.interval)


def start(env: Mapping[str, str], interval: float, *, control: str, ledger: Any | None) -> Poster | None:
    """Node 0's poster, started; None when the endpoint is not configured (the gate off) or `interval` is 0.

    ledger: trainer.ledger_io.Ledger (its record, `previous` and history), or None: no goodput.
    """
    endpoint = Endpoint.from_env(env)
    if endpoint is None or not interval:
        return None
    rate = RateWindow()
    history: list[Attempt] = []

    def read_history() -> None:
        if ledger is not None and ledger.record is not None:
            try:
                history.extend(ledger.history(HISTORY_LIMIT))
            except Exception as e:  # noqa: BLE001
                log.warning("trainjob status: the restart ledger could not be read (%s); goodput not posted", e)

    def series() -> list[Attempt]:
        if ledger is None or ledger.record is None:
            return []
        # history: before this start; previous: also this start's attempts that ended in place.
        known = {a.name: a for a in [*history, *ledger.previous]}
        return sorted(known.values(), key=lambda a: a.started_at) + [ledger.record]

    poster = Poster(endpoint, interval, lambda now: read_facts(control, rate, series, now), prepare=read_history)
    log.info("trainjob status: posting progress to %s every %g s at most", endpoint.url, poster.interval)
    return poster.start()
