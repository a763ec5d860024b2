"""Node 0's TrainJob status posts (trainer/trainjob_status.py): the body as Kubeflow Trainer v2.3.0's
status server decodes it, the ETA, and the poster against a local HTTPS server that takes, refuses,
hangs or fails: training's side never waits, and each outage is one log line."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import ssl
import subprocess
import threading
import time

import pytest

from trainer import contract, trainjob_status
from trainer.contract import Attempt
from trainer.control_folder import Committed, Progress, TotalSteps, clear_attempt
from trainer.trainjob_status import Endpoint, Facts, Poster, RateWindow, body, eta_seconds, read_facts

NOW = 1_750_000_000.0
PATH = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ns/trainjobs/job/status"


# --- the body (pure) -------------------------------------------------------------------------

def test_the_body_has_progress_eta_and_the_facts_as_metrics():
    doc = body(Facts(step=250, total=1000, committed=200, goodput=0.9321, rate=5.0), NOW)
    assert doc == {"trainerStatus": {
        "progressPercentage": 25, "estimatedRemainingSeconds": 150,
        "metrics": [{"name": "step", "value": "250"}, {"name": "total_steps", "value": "1000"},
                    {"name": "last_committed_step", "value": "200"}, {"name": "goodput", "value": "0.932"},
                    {"name": "steps_per_second", "value": "5"}],
        "lastUpdatedTime": "2025-06-15T15:06:40Z"}}
    # The CRD's bounds: names and values 1-64 characters.
    assert all(1 <= len(m["name"]) <= 64 and 1 <= len(m["value"]) <= 64 for m in doc["trainerStatus"]["metrics"])


def test_without_a_declared_total_there_is_no_percentage_or_eta():
    doc = body(Facts(step=7, total=None, committed=None, goodput=None, rate=2.0), NOW)["trainerStatus"]
    assert "progressPercentage" not in doc and "estimatedRemainingSeconds" not in doc
    assert doc["metrics"] == [{"name": "step", "value": "7"}, {"name": "steps_per_second", "value": "2"}]
    empty = body(Facts(None, None, None, None, None), NOW)["trainerStatus"]
    assert empty == {"lastUpdatedTime": "2025-06-15T15:06:40Z"}  # lastUpdatedTime: required by the CRD


@pytest.mark.parametrize("step,total,rate,want", [
    (0, 100, 2.0, 50), (99, 100, 0.5, 2), (100, 100, None, 0), (120, 100, 3.0, 0),
    (10, 100, None, None), (10, 100, 0.0, None), (10, None, 1.0, None), (None, 100, 1.0, None),
    (0, 2 ** 40, 1e-3, 2 ** 31 - 1)])  # int32 field
def test_eta(step, total, rate, want):
    assert eta_seconds(step, total, rate) == want


def test_percentage_is_clamped_to_0_100():
    assert trainjob_status.percentage(150, 100) == 100 and trainjob_status.percentage(None, 10) == 0
    assert trainjob_status.percentage(1, 3) == 33


def test_the_rate_is_over_the_newest_minute_and_restarts_when_the_step_goes_back():
    r = RateWindow()
    assert r.add(0.0, 0) is None
    assert r.add(10.0, 50) == 5.0
    assert r.add(100.0, 950) == pytest.approx(900 / 90)  # the sample at 0 s fell out of the window
    assert r.add(101.0, 400) is None  # an in-place restart resumed from an earlier commit
    assert r.add(103.0, 410) == 5.0


def test_facts_read_from_the_control_folder_and_the_ledger(tmp_path):
    d = str(tmp_path)
    for rank, step in ((0, 30), (1, 29)):
        Progress(rank, step, NOW).write(d)
    Committed(20, NOW - 5).write(d)
    TotalSteps(120).write(d)
    series = [Attempt(name="a1", node_rank=0, started_at=NOW - 100, resumed_from=None, committed=10,
                      committed_at=NOW - 60, ended_at=NOW - 50, code=143),
              Attempt(name="a2", node_rank=0, started_at=NOW - 40, resumed_from=25)]
    facts = read_facts(d, RateWindow(), lambda: series, NOW)
    assert (facts.step, facts.total, facts.committed) == (30, 120, 25)  # resumed from 25: newer than the file's 20
    assert facts.goodput == pytest.approx(0.4)  # 40 s of a1 ended in a commit, over 100 s
    clear_attempt(d)  # an in-place restart: the new ranks declare again
    assert read_facts(d, RateWindow(), lambda: [], NOW) == Facts(None, None, None, None, None)


def test_total_steps_record_reads_only_a_positive_whole_number(tmp_path):
    for text in ("", "x", "0", "-3"):
        (tmp_path / TotalSteps.NAME).write_text(text)
        assert TotalSteps.read(str(tmp_path)) is None
    TotalSteps(5).write(str(tmp_path))
    assert TotalSteps.read(str(tmp_path)) == TotalSteps(5)


def test_the_endpoint_is_off_without_the_variables_and_says_nothing(caplog):
    caplog.set_level(logging.DEBUG)
    assert Endpoint.from_env({}) is None
    assert trainjob_status.start({}, 10.0, control="/nonexistent", ledger=None) is None
    assert caplog.records == []
    env = dict(zip(contract.TRAINER_STATUS_ENV, ("https://x/status", "/ca.crt", "/token")))
    assert Endpoint.from_env(env) == Endpoint("https://x/status", "/ca.crt", "/token")
    assert trainjob_status.start(env, 0, control="/nonexistent", ledger=None) is None  # --trainjob-status-seconds 0
    partial = {contract.TRAINER_STATUS_URL_ENV: "https://x/status"}
    assert Endpoint.from_env(partial) is None
    assert [r.levelname for r in caplog.records] == ["WARNING"] and contract.TRAINER_STATUS_TOKEN_ENV in caplog.text


# --- the poster against a local HTTPS server -----------------------------------------------------------

@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: the CA file the poster verifies with, and the server's pair."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "tls.key"), "-out", str(d / "tls.crt")],
                   check=True, capture_output=True)
    return d


class Server:
    """An HTTPS server on 127.0.0.1 that records each request and answers as `mode` says: ok, 500, hang."""

    def __init__(self, tls, port: int = 0) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self.mode = "ok"
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, self.headers["Authorization"], doc))
                if server.mode == "hang":
                    server.release.wait(10)
                    return
                code, answer = (200, doc) if server.mode == "ok" else (500, {
                    "kind": "Status", "status": "Failure", "message": "Internal error", "code": 500})
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls / "tls.crt"), str(tls / "tls.key"))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Steps:
    """Facts whose step moves by one at each read."""

    def __init__(self) -> None:
        self.step = 0

    def __call__(self, now: float) -> Facts:
        self.step += 1
        return Facts(step=self.step, total=100, committed=None, goodput=None, rate=1.0)


def endpoint(tls, tmp_path, port: int) -> Endpoint:
    (tmp_path / "token").write_text("token-1\n")
    return Endpoint(f"https://127.0.0.1:{port}{PATH}", str(tls / "tls.crt"), str(tmp_path / "token"))


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="kubetrain.trainjob_status")


def outage_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kubetrain.trainjob_status"]


def test_posts_the_body_with_a_token_read_at_each_post_and_only_when_the_facts_moved(tls, tmp_path, caplog):
    server = Server(tls)
    try:
        ep = endpoint(tls, tmp_path, server.port)
        facts = [Facts(1, 10, None, None, None)] * 2 + [Facts(2, 10, None, None, None)]
        poster = Poster(ep, 10, lambda now: facts.pop(0))
        poster._tick()
        poster._tick()  # the same facts: no post
        (tmp_path / "token").write_text("token-2\n")  # the kubelet rotated the projected token
        poster._tick()
        assert [(p, a) for p, a, _ in server.requests] == [(PATH, "Bearer token-1"), (PATH, "Bearer token-2")]
        assert server.requests[1][2]["trainerStatus"]["progressPercentage"] == 20
        assert (poster.posted, poster.failed) == (2, 0) and outage_lines(caplog) == []
    finally:
        server.close()


def test_a_refusing_endpoint_is_one_line_per_outage_and_one_when_it_recovers(tls, tmp_path, caplog):
    port = free_port()  # nothing listens yet
    poster = Poster(endpoint(tls, tmp_path, port), 10, Steps())
    for _ in range(3):
        poster._tick()
    assert poster.failed == 3
    (line,) = outage_lines(caplog)
    assert "cannot post progress" in line and "refused" in line.lower() and "training goes on" in line
    server = Server(tls, port)
    try:
        poster._tick()
        poster._tick()
        assert len(server.requests) == 2
        assert outage_lines(caplog)[1:] == ["trainjob status: posting again after 3 failed post(s) over 0 s"]
    finally:
        server.close()
    poster._tick()  # a second outage: a line of its own
    assert len(outage_lines(caplog)) == 3


def test_a_500_says_the_servers_message(tls, tmp_path, caplog):
    server = Server(tls)
    server.mode = "500"
    try:
        poster = Poster(endpoint(tls, tmp_path, server.port), 10, Steps())
        poster._tick()
        poster._tick()
        (line,) = outage_lines(caplog)
        assert "HTTP 500 Internal error" in line
    finally:
        server.close()


def test_a_hanging_endpoint_costs_the_poster_its_timeout_and_never_the_caller(tls, tmp_path, caplog):
    server = Server(tls)
    server.mode = "hang"
    try:
        poster = Poster(endpoint(tls, tmp_path, server.port), 10, Steps(), timeout=0.3)
        t0 = time.monotonic()
        poster._tick()
        assert time.monotonic() - t0 < 2
        (line,) = outage_lines(caplog)
        assert "timed out" in line, line
        # On its thread: closing while a post hangs returns at once (a stop, not a clean finish).
        poster = Poster(endpoint(tls, tmp_path, server.port), 1, Steps(), timeout=5)
        poster.start()
        time.sleep(1.3)  # the first post is in flight, hanging
        t0 = time.monotonic()
        poster.close(final=False)
        assert time.monotonic() - t0 < 0.2
    finally:
        server.close()


def test_the_poster_thread_posts_at_most_once_per_interval_and_a_last_time_at_a_clean_finish(tls, tmp_path):
    server = Server(tls)
    try:
        poster = Poster(endpoint(tls, tmp_path, server.port), 1, Steps()).start()
        time.sleep(2.5)
        poster.close(final=True)
        assert len(server.requests) == 3  # two ticks, then the final post
        assert contract.TRAINJOB_STATUS_MIN_SECONDS == 1.0
        assert Poster(endpoint(tls, tmp_path, server.port), 0.01, Steps()).interval == 1.0  # the floor
    finally:
        server.close()
