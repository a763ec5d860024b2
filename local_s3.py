"""A local S3 endpoint for the tests and the benchmarks: moto's server on 127.0.0.1.

Both `tests/` and `bench/` start one, and neither should import the other (the bench is
not part of the test suite, and the tests do not need the bench), so the one way to start
it lives here, beside them. Not part of the installed package or the runtime image.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Iterator

#: moto accepts any key; a distinctive secret lets tests prove it never reaches a log.
SECRET = "kt-secret-8f3a1c9e77"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAKUBETRAINTEST", "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
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
def moto_server() -> Iterator[str]:
    """Start `moto_server` on a free loopback port; yield its endpoint URL; stop it on the way out."""
    port = free_port()
    proc = subprocess.Popen([moto_server_exe(), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
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
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
