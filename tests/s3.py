"""S3 for the tests: moto's server on 127.0.0.1 (testsupport/local_s3.py, shared with the bench), one that
checks credentials, MinIO (a second, real S3 server), and a proxy that breaks requests."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import random
import re
import socket
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.request import Request, urlopen

# One way to start moto, shared with the bench; the tests import these names from here.
from testsupport.local_s3 import CREDENTIALS, SECRET, free_port, moto_server, serving  # noqa: F401
from tests.helpers import REPO

#: MinIO's root user, the one key it knows; a distinctive secret, as for moto (SECRET).
MINIO_SECRET = "kt-minio-secret-4e2b91"
MINIO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "kubetrain-minio", "AWS_SECRET_ACCESS_KEY": MINIO_SECRET,
                     "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def authenticating_moto() -> Iterator[dict]:
    """A second moto server that checks credentials, unlike the shared one, which accepts any.

    Before auth is switched on (moto's /moto-api/reset-auth, the runtime form of
    INITIAL_NO_AUTH_ACTION_COUNT) it creates an IAM user allowed s3:* with a key, a user
    with a key and no policy, and a bucket. Yields the endpoint, the bucket and both keys.
    """
    import boto3

    with moto_server() as url:
        admin = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "AKIAKUBETRAINADMIN",
                 "aws_secret_access_key": "admin"}
        iam = boto3.client("iam", **admin)
        keys = {}
        for user, allowed in (("trainer", True), ("nobody", False)):
            iam.create_user(UserName=user)
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
            if allowed:
                iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(
                    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        bucket = "ckpt-auth"
        boto3.client("s3", **admin).create_bucket(Bucket=bucket)
        # Every request from here on is checked against the IAM users above.
        urlopen(Request(url + "/moto-api/reset-auth", data=b"0", method="POST",
                        headers={"Content-Type": "text/plain"}), timeout=10).read()
        yield {"url": url, "bucket": bucket,
               "trainer": (keys["trainer"]["AccessKeyId"], keys["trainer"]["SecretAccessKey"]),
               "nobody": (keys["nobody"]["AccessKeyId"], keys["nobody"]["SecretAccessKey"])}


def minio_exe() -> str:
    """Where the MinIO binary is: in $KUBETRAIN_MINIO_BIN, else in cluster/build-minio's cache (which
    `--dir` names without building: a cold build takes minutes, too long for a test's setup). It may
    not exist."""
    folder = os.environ.get("KUBETRAIN_MINIO_BIN") or subprocess.run(
        [os.path.join(REPO, "cluster", "build-minio"), "--dir"], capture_output=True, text=True,
        check=True).stdout.strip()
    return os.path.join(folder, "minio")


@contextlib.contextmanager
def minio_server(exe: str, data_dir: str) -> Iterator[str]:
    """Start MinIO (one drive in `data_dir`, MINIO_CREDENTIALS as its root user) on a free loopback
    port; yield its endpoint URL once it is ready; stop it on the way out."""
    port, console = free_port(), free_port()
    env = {**os.environ, "MINIO_ROOT_USER": MINIO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
           "MINIO_ROOT_PASSWORD": MINIO_SECRET, "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:  # its health endpoint answers 200 once it serves S3 requests
        try:
            with urlopen(url + "/minio/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    with serving([exe, "server", "--quiet", "--address", f"127.0.0.1:{port}", "--console-address",
                  f"127.0.0.1:{console}", os.path.join(data_dir, "drive")], ready, f"MinIO on {url}", env=env,
                 log_path=os.path.join(data_dir, "minio.log")):
        yield url


def minio_as_auth_server(url: str) -> dict:
    """MinIO in the shape of authenticating_moto()'s server: its root key as the one allowed, and
    no key without permissions (making one needs MinIO's encrypted admin API); a bucket."""
    import boto3

    bucket = "ckpt-auth"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=MINIO_CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=MINIO_SECRET)
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return {"url": url, "bucket": bucket, "trainer": (MINIO_CREDENTIALS["AWS_ACCESS_KEY_ID"], MINIO_SECRET),
            "nobody": None}


@dataclasses.dataclass
class FaultRule:
    """Fail the requests whose method is in `methods` and whose path (without the query) matches
    `path`: with `status` and S3 error `code`, or a TCP reset when `status` is 0. Only the first
    `count` of them (None: no limit), and only until `until` (time.monotonic(); None: no end)."""

    methods: tuple[str, ...]
    path: re.Pattern
    status: int = 500
    code: str = "InternalError"
    count: int | None = None
    until: float | None = None
    #: Requests this rule failed so far.
    hits: int = 0

    def take(self, method: str, path: str) -> bool:
        """Whether this request fails by this rule (and count it); called under the proxy's lock."""
        if method not in self.methods or not self.path.search(path.split("?", 1)[0]):
            return False
        if (self.count is not None and self.hits >= self.count) or (
                self.until is not None and time.monotonic() >= self.until):
            return False
        self.hits += 1
        return True


class FaultProxy:
    """An HTTP proxy to S3 that fails a fraction of requests the way S3 and networks do.

    Per request: 503 SlowDown (S3's throttling reply), 500 InternalError, or a
    TCP reset with no reply; otherwise it forwards to the upstream endpoint.
    `fail_all` fails every write (PUT/POST) with 503, for outage tests.
    `fail(...)` adds a FaultRule: only some request kinds, for a bounded count or time window.
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
        self.rules: list[FaultRule] = []
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
                    rule = next((r for r in proxy.rules if r.take(self.command, self.path)), None)
                if rule is not None and rule.status == 0:
                    return self._reset()
                if rule is not None:
                    return self._error(rule.status, rule.code, f"injected by a FaultRule ({rule.code})")
                write = self.command in ("PUT", "POST")
                if (proxy.fail_all_writes and write) or roll < proxy.rate * 0.4:
                    return self._error(503, "SlowDown", "Please reduce your request rate.")
                if roll < proxy.rate * 0.7:
                    return self._error(500, "InternalError", "We encountered an internal error.")
                if roll < proxy.rate:
                    return self._reset()
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

            def _reset(self) -> None:
                proxy._count("reset")
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

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

    def fail(self, methods: tuple[str, ...], path: str, *, status: int = 500, code: str = "InternalError",
             count: int | None = None, seconds: float | None = None) -> FaultRule:
        """Fail matching requests (see FaultRule); `seconds`: a window starting now."""
        rule = FaultRule(methods=methods, path=re.compile(path), status=status, code=code, count=count,
                         until=None if seconds is None else time.monotonic() + seconds)
        with self.lock:
            self.rules.append(rule)
        return rule

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
