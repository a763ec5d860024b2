"""A real S3 endpoint for tests: moto's server on 127.0.0.1, and a proxy that breaks requests."""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

#: moto accepts any key; a distinctive secret lets tests prove it never reaches a log.
SECRET = "kt-secret-8f3a1c9e77"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAKUBETRAINTEST", "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Start `moto_server` on a free loopback port; yield its endpoint URL."""
    # This interpreter's own moto first: a moto_server elsewhere on PATH may be another version, or none.
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(exe):
        exe = shutil.which("moto_server") or exe
    if not os.path.exists(exe):
        raise RuntimeError("moto_server is not installed: pip install 'moto[server]'")
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {url}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class FaultProxy:
    """An HTTP proxy to S3 that fails a fraction of requests the way S3 and networks do.

    Per request: 503 SlowDown (S3's throttling reply), 500 InternalError, or a
    TCP reset with no reply; otherwise it forwards to the upstream endpoint.
    `fail_all` fails every write (PUT/POST) with 503, for outage tests.
    """

    def __init__(self, upstream: str, rate: float, seed: int = 0) -> None:
        self.upstream = upstream.split("://", 1)[1]
        self.rate = rate
        self.fail_all_writes = False
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"forwarded": 0, "503": 0, "500": 0, "reset": 0}
        #: (method, path) of every request forwarded to the upstream, in order.
        self.forwarded: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                with proxy.lock:
                    roll = proxy.rng.random()
                write = self.command in ("PUT", "POST")
                if (proxy.fail_all_writes and write) or roll < proxy.rate * 0.4:
                    return self._error(503, "SlowDown", "Please reduce your request rate.")
                if roll < proxy.rate * 0.7:
                    return self._error(500, "InternalError", "We encountered an internal error.")
                if roll < proxy.rate:
                    proxy._count("reset")
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()
                proxy._count("forwarded")
                with proxy.lock:
                    proxy.forwarded.append((self.command, self.path))

            def _error(self, status: int, code: str, message: str) -> None:
                proxy._count(str(status))
                data = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        f"<Message>{message}</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
