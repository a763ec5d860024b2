"""The supervisor's /metrics on a real run: two gloo ranks, a SIGTERM, a resume; every scrape parsed by
prometheus_client's own parser, the numbers checked against the run's folder and restart ledger."""

from __future__ import annotations

import os
import signal
import socket
import urllib.request

import pytest

from tests.helpers import EXAMPLE, assert_no_workers, start, wait_for
from trainer import contract

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

pytestmark = pytest.mark.runtime
ARGS = ["--steps", "400", "--samples", "2048", "--hidden", "64", "--step-sleep", "0.03"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float] | None:
    """{name{labels}: value} of one scrape; None when nothing answers."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except OSError:
        return None
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def trainer(tmp_path, port: int, log: str):
    (tmp_path / "faults").mkdir(exist_ok=True)
    return start(["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ckpt"), "--run-id", "m",
                  "--checkpoint-every-steps", "20", "--max-restarts", "2", "--grace-seconds", "20",
                  "--metrics-port", str(port), EXAMPLE, *ARGS], log_path=str(tmp_path / log),
                 env={contract.ENV_FAULTS_DIR: str(tmp_path / "faults")})


def test_metrics_follow_a_run_through_a_sigterm_and_its_resume(tmp_path):
    port = free_port()
    latest = tmp_path / "ckpt" / "m" / "latest"
    proc = trainer(tmp_path, port, "first.log")
    wait_for(lambda: latest.exists() and int(latest.read_text()) >= 40, 180, "two commits")
    first = {}
    wait_for(lambda: (first.update(scrape(port) or {}) or first.get("kubetrain_checkpoint_stall_seconds_count", 0)
                      >= 4), 60, "both ranks' saves in a scrape")
    assert first["kubetrain_step"] >= 20 and first["kubetrain_step_rate"] >= 0
    assert first["kubetrain_last_committed_step"] >= 40
    assert first["kubetrain_checkpoint_upload_bytes_sum"] > 0 and first["kubetrain_checkpoint_failures_total"] == 0
    assert first["kubetrain_restore_seconds_count{source=none}"] == 1
    assert first["kubetrain_restart_budget_left"] == 2 and "kubetrain_restarts" not in str(first)

    # The supervisor still serves while the ranks commit their stop step: a commit held 3 s makes
    # that window wide enough for a scrape to land in however busy the machine (CI once missed it).
    slow = tmp_path / "faults" / contract.FAULT_SLOW_COMMIT
    slow.write_text("3")
    proc.send_signal(signal.SIGTERM)
    notice, during = "kubetrain_preemption_notices_total{source=SIGTERM}", {}
    wait_for(lambda: during.update(scrape(port) or {}) or notice in during or proc.poll() is not None, 60,
             "the notice in a scrape")
    assert proc.wait(120) == 143, (tmp_path / "first.log").read_text()
    assert during.get(notice) == 1, during
    slow.unlink()
    stopped = int(latest.read_text())
    assert scrape(port) is None  # gone with its supervisor
    assert_no_workers(EXAMPLE)

    proc = trainer(tmp_path, port, "second.log")
    second: dict[str, float] = {}
    wait_for(lambda: (second.update(scrape(port) or {}) or "kubetrain_goodput_ratio" in second
                      and second.get("kubetrain_restore_seconds_count{source=checkpoint}") == 1), 180,
             "the resumed run's restore in a scrape")
    assert second["kubetrain_last_committed_step"] >= stopped
    assert second["kubetrain_restarts{cause=preempted,code=143}"] == 1
    assert second["kubetrain_restart_budget_left"] == 2  # a preemption spends none
    assert 0 <= second["kubetrain_goodput_ratio"] <= 1
    assert "kubetrain_preemption_notices_total{source=SIGTERM}" not in second  # this start got none
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 143, (tmp_path / "second.log").read_text()
    log = (tmp_path / "first.log").read_text()
    assert f"metrics: serving :{port}/metrics" in log and "Traceback" not in log


def test_a_metrics_port_already_taken_is_one_line_and_the_run_trains_on(tmp_path):
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        proc = start(["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ckpt"), "--run-id", "t",
                      "--metrics-port", str(port), EXAMPLE, "--steps", "30", "--samples", "512", "--hidden",
                      "16"], log_path=str(tmp_path / "t.log"))
        assert proc.wait(240) == 0, (tmp_path / "t.log").read_text()
    finally:
        taken.close()
    log = (tmp_path / "t.log").read_text()
    assert log.count(f"not served on port {port}") == 1 and "Traceback" not in log
