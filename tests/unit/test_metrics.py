"""The supervisor's /metrics (trainer/metrics/): what a scrape serves from the control folder and the
restart ledger, parsed by prometheus_client's own parser; a port taken is one log line, not a crash."""

from __future__ import annotations

import logging
import socket
import urllib.request

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from trainer import contract, metrics  # noqa: E402
from trainer.contract import Attempt  # noqa: E402
from trainer.control_folder import CheckpointEvent, Committed, Progress, RankStats  # noqa: E402
from trainer.metrics import ledger_view  # noqa: E402
from trainer.metrics.collector import RuntimeCollector, Sources  # noqa: E402


@pytest.fixture(autouse=True)
def _no_errors_of_this_process(monkeypatch):
    """The collector adds its own process's storage errors: here, the test process's, from other tests."""
    from trainer.storage import error_counts

    monkeypatch.setattr(error_counts, "counts", lambda: {})


class _Ledger:
    """The parts of trainer.ledger_io.Ledger the collector reads, over an in-memory store."""

    def __init__(self, record, previous=(), max_restarts=None, earlier=()):
        self.record, self.previous, self.max_restarts = record, list(previous), max_restarts
        self.node_rank, self.dir = record.node_rank, "mem/run/attempts"
        self.storage = self
        self._objects = {a.name: a.to_json() for a in earlier} | {record.name: record.to_json()}

    def list_names(self, _dir):
        return list(self._objects)

    from trainer.ledger_io import Ledger

    history = Ledger.history  # the real reader, over this store

    def read_small(self, uri):
        return self._objects.get(uri.rsplit("/", 1)[-1])


def _attempt(t, node=0, **kw):
    return Attempt(name=contract.attempt_name(t, node, f"{int(t):08x}"), node_rank=node, started_at=t, **kw)


def scrape(collector) -> dict[str, dict]:
    """{sample name + labels: value} of one scrape, through the client's exposition and parser."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")] \
                = s.value
    return out


def _wait_history(collector):
    import time

    for _ in range(200):
        if collector._history is not None:
            return
        time.sleep(0.01)


def test_a_scrape_serves_progress_commits_checkpoint_times_storage_errors_and_the_ledger(tmp_path):
    control = str(tmp_path)
    # This node's history: a start killed (137), one preempted, now a third.
    earlier = [_attempt(1000.0, resumed_from=None, committed=20, committed_at=1030.0, code=137, ended_at=1040.0),
               _attempt(1050.0, resumed_from=20, committed=40, committed_at=1080.0, stopping="SIGTERM", code=143,
                        ended_at=1085.0)]
    current = _attempt(1100.0, resumed_from=40)
    ledger = _Ledger(current, previous=earlier[1:], max_restarts=3, earlier=earlier)
    stops: list[str] = []
    c = RuntimeCollector(Sources(control, "train", 0, ledger, lambda: tuple(stops)))
    _wait_history(c)
    Progress(0, 50, 1200.0).write(control)
    Progress(1, 49, 1200.1).write(control)
    Committed(50, 1199.0).write(control)
    RankStats(0, (CheckpointEvent(1, "restore", 40, 1101.0, seconds=2.5, source="checkpoint"),
                  CheckpointEvent(2, "save", 50, 1199.0, stall_s=0.2, upload_s=3.0, bytes=5_000_000)),
              {"throttled": 2}).write(control)
    RankStats(1, (CheckpointEvent(1, "save", 50, 1199.0, stall_s=0.4, upload_s=1.0, bytes=1000),),
              {"throttled": 1, "server": 1}).write(control)
    stops.append("SIGTERM")
    m = scrape(c)
    assert m["kubetrain_step"] == 50 and m["kubetrain_last_committed_step"] == 50
    assert m["kubetrain_last_committed_timestamp_seconds"] == 1199.0
    assert m["kubetrain_checkpoint_stall_seconds_count"] == 2
    assert m["kubetrain_checkpoint_stall_seconds_sum"] == pytest.approx(0.6)
    assert m["kubetrain_checkpoint_upload_bytes_sum"] == 5_001_000
    assert m["kubetrain_restore_seconds_count{source=checkpoint}"] == 1
    assert m["kubetrain_storage_errors_total{kind=throttled}"] == 3
    assert m["kubetrain_storage_errors_total{kind=server}"] == 1
    assert m["kubetrain_preemption_notices_total{source=SIGTERM}"] == 1
    assert m["kubetrain_restarts{cause=killed,code=137}"] == 1
    assert m["kubetrain_restarts{cause=preempted,code=143}"] == 1
    assert m["kubetrain_restart_budget_left"] == 3  # the preemption spent none; 137 came before a commit
    assert 0 < m["kubetrain_goodput_ratio"] <= 1
    assert m["kubetrain_run_info{attempt=" + current.name + ",node_rank=0,run_id=train}"] == 1

    # A second scrape counts only what is new: one more save, one more error.
    RankStats(1, (CheckpointEvent(1, "save", 50, 1199.0, stall_s=0.4), CheckpointEvent(2, "save", 60, 1300.0,
                                                                                      ok=False, stall_s=0.1)),
              {"throttled": 1, "server": 2}).write(control)
    Progress(0, 60, 1260.0).write(control)
    m = scrape(c)
    assert m["kubetrain_checkpoint_stall_seconds_count"] == 3
    assert m["kubetrain_storage_errors_total{kind=server}"] == 2
    assert m["kubetrain_preemption_notices_total{source=SIGTERM}"] == 1
    assert m["kubetrain_checkpoint_failures_total"] == 0  # rank 0 (this node's first) saw no failure
    assert m["kubetrain_step_rate"] == pytest.approx(10 / 60)


def test_an_empty_folder_and_no_ledger_serve_what_is_known_without_error(tmp_path, caplog):
    c = RuntimeCollector(Sources(str(tmp_path / "none"), "r", 1, None, lambda: ()))
    m = scrape(c)
    assert m["kubetrain_run_info{attempt=,node_rank=1,run_id=r}"] == 1
    assert "kubetrain_step" not in m and "kubetrain_goodput_ratio" not in m
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_budget_left_counts_failures_since_the_last_commit_and_never_preemptions():
    a = _attempt(1.0, resumed_from=None, committed=10, code=137)
    b = _attempt(2.0, resumed_from=10, code=1)
    c = _attempt(3.0, resumed_from=10, stopping="SIGTERM", code=143)
    d = _attempt(4.0, resumed_from=10)
    assert ledger_view.budget_left([a, b, c, d], 3) == 2
    assert ledger_view.budget_left([a, b, c, d], None) is None
    assert ledger_view.budget_left([b, b, b, d], 2) == 0


def test_a_metrics_port_already_taken_is_one_log_line_and_no_server(tmp_path, caplog):
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with caplog.at_level(logging.WARNING, "kubetrain.metrics"):
            server = metrics.start(port, control=str(tmp_path), run_id="r", node_rank=0, ledger=None,
                                   stop_requests=lambda: ())
        assert server is None
        assert len([r for r in caplog.records if "not served on port" in r.getMessage()]) == 1
    finally:
        taken.close()


def test_a_free_port_serves_metrics_over_http(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = metrics.start(port, control=str(tmp_path), run_id="r", node_rank=0, ledger=None,
                           stop_requests=lambda: ("SIGTERM",))
    assert server is not None
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.close()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"kubetrain_run_info", "kubetrain_preemption_notices", "kubetrain_checkpoint_stall_seconds"} <= names
