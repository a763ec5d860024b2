"""The exit-code contract, end to end through torchrun."""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import EXAMPLE, FIXTURES, assert_no_workers, read_json, run, start, wait_for

pytestmark = pytest.mark.runtime
FAULTY = os.path.join(FIXTURES, "faulty.py")


def faulty(tmp_path, *args: str, trainer: tuple[str, ...] = ()) -> "subprocess.CompletedProcess":
    return run(["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ckpt"), *trainer, FAULTY, *args], timeout=120)


def test_an_exception_in_user_code_exits_1_and_prints_the_root_cause_once(tmp_path):
    r = faulty(tmp_path, "--fail", "raise", "--rank", "1", "--at-step", "3")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert out.count("Traceback (most recent call last)") == 1, out
    assert "ValueError: boom at step 3" in out
    assert "rank 1 raised ValueError" in out
    assert_no_workers(FAULTY)


def test_a_user_exit_code_below_128_is_kept_and_permanent(tmp_path):
    r = faulty(tmp_path, "--fail", "exit", "--exit-code", "3")
    assert r.returncode == 3, r.stdout + r.stderr


def test_the_watchdog_kills_a_hung_rank_and_names_it(tmp_path):
    r = faulty(tmp_path, "--fail", "hang", "--rank", "1", "--at-step", "4", "--steps", "1000",
               trainer=("--hang-timeout", "4"))
    out = r.stdout + r.stderr
    assert r.returncode == 200, out
    assert "watchdog: no step progress" in out and "rank 1 (last step" in out
    assert_no_workers(FAULTY)


def test_a_clean_run_exits_0(tmp_path):
    r = faulty(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


class _Metadata(BaseHTTPRequestHandler):
    """The instance metadata service, as much of it as a preemption poll uses."""

    preempt = threading.Event()

    def log_message(self, *args):
        pass

    def do_PUT(self):  # IMDSv2 token
        if self.path == "/latest/api/token" and "X-aws-ec2-metadata-token-ttl-seconds" in self.headers:
            self._reply(200, b"token-123")
        else:
            self._reply(400, b"")

    def do_GET(self):
        if self.path == "/latest/meta-data/spot/instance-action":
            if self.headers.get("X-aws-ec2-metadata-token") != "token-123":
                self._reply(401, b"")
            elif self.preempt.is_set():
                self._reply(200, b'{"action": "terminate", "time": "2026-11-27T04:30:00Z"}')
            else:
                self._reply(404, b"")
        elif self.path == "/computeMetadata/v1/instance/preempted":
            if self.headers.get("Metadata-Flavor") != "Google":
                self._reply(403, b"")
            else:
                self._reply(200, b"TRUE" if self.preempt.is_set() else b"FALSE")
        else:
            self._reply(404, b"")

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("path,notice", [("/latest/meta-data/spot/instance-action", "AWS spot instance-action terminate"),
                                         ("/computeMetadata/v1/instance/preempted", "GCP instance preempted")],
                         ids=["aws-spot-imdsv2", "gcp-preempted"])
def test_a_cloud_preemption_notice_stops_with_a_committed_checkpoint_and_143(tmp_path, path, notice):
    handler = type("Metadata", (_Metadata,), {"preempt": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ckpt, result = str(tmp_path / "ckpt"), str(tmp_path / "result.json")
        proc = start(["--nproc-per-node", "2", "--checkpoint", ckpt, "--run-id", "exp", "--checkpoint-every-steps", "20",
                      "--preemption-url", f"http://127.0.0.1:{server.server_port}{path}",
                      "--preemption-poll-seconds", "0.2", EXAMPLE, "--steps", "400", "--step-sleep", "0.03",
                      "--result", result], log_path=str(tmp_path / "log"))
        wait_for(lambda: os.path.exists(os.path.join(ckpt, "exp", "latest")), 120, "the first checkpoint")
        handler.preempt.set()
        assert proc.wait(60) == 143, open(tmp_path / "log").read()
        log = open(tmp_path / "log").read()
        assert notice in log, log  # this provider's notice, not either one
        step = int(open(os.path.join(ckpt, "exp", "latest")).read())
        assert f"checkpoint step {step} committed" in log
        assert not os.path.exists(result)  # it stopped, it did not finish
    finally:
        server.shutdown()
