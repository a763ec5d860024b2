"""A local S3 endpoint for the tests and the benchmarks: moto's server on 127.0.0.1 (or the node
tier's bridge address), and `serving`, the one way the tests run a server process (MinIO too)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Callable, Iterator

#: moto accepts any key; a distinctive secret lets tests prove it never reaches a log.
SECRET = "kt-secret-8f3a1c9e77"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAKUBETRAINTEST", "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def moto_server_exe() -> str:
    """This interpreter's own moto first: a moto_server elsewhere on PATH may be another version, or none."""
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(exe):
        exe = shutil.which("moto_server") or exe
    if not os.path.exists(exe):
        raise RuntimeError("moto_server is not installed: pip install 'moto[server]'")
    return exe


@contextlib.contextmanager
def serving(cmd: list[str], ready: Callable[[], bool], what: str, *, env: dict | None = None,
            log_path: str | None = None, timeout: float = 60) -> Iterator[None]:
    """Run a test server `cmd` until the block ends: wait for `ready()`, stop it (SIGTERM, then SIGKILL)
    on the way out. Its output goes to `log_path` (shown when it fails to start), else nowhere."""
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = open(log_path).read()[-3000:] if log_path else ""
                raise RuntimeError(f"{what} did not start" + (f":\n{tail}" if tail else ""))
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            log.close()


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def moto_server(host: str = "127.0.0.1", log_path: str | None = None) -> Iterator[str]:
    """Start `moto_server` on a free port of `host`; yield its endpoint URL; stop it on the way out."""
    port = free_port(host)
    url = f"http://{host}:{port}"
    with serving([moto_server_exe(), "-H", host, "-p", str(port)], lambda: listening(host, port),
                 f"moto_server on {url}", log_path=log_path, timeout=30):
        yield url
