"""`python -m bench` ends: a SIGTERM or Ctrl-C mid-run stops it, and nothing it started outlives it.

The bench once printed every figure and never exited, and ignored SIGTERM (bench/cli.py says
why). Here it runs M6, whose run is `python -m trainer run` under the bench's metric process,
with torchrun's rank in a session of its own and the bench's moto server beside it; the
signal lands while that rank trains. Every process the bench starts inherits a marker
variable, which is how the test finds any that outlived it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.helpers import REPO
from trainer.processes import proc_table

pytestmark = pytest.mark.runtime
MARKER = "KUBETRAIN_BENCH_TEST_MARKER"


def alive_with(marker: str) -> list[str]:
    """Live processes (not zombies) whose environment holds the marker: 'pid command'."""
    found = []
    for pid, (_, state) in proc_table().items():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if state == "Z" or f"{MARKER}={marker}".encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        found.append(f"{pid} {cmd}")
    return found


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "ctrl-c"])
def test_a_signal_mid_run_ends_the_bench_and_every_process_it_started(sig, code, tmp_path):
    marker = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "bench", "--quick", "M6", "--out", str(tmp_path)], cwd=REPO,
                            env={**os.environ, MARKER: marker}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "M6 SIGTERM trial 1/1: training" in line:
                break
        assert any("training" in line for line in seen), "".join(seen)
        assert any("trainer.worker" in p for p in alive_with(marker)), "the rank should be running now"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, "".join(seen) + err
    assert f"stopped by {sig.name}" in err
    deadline = time.monotonic() + 30  # /proc may show a process the bench has just reaped a moment longer
    while alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive_with(marker) == [], "".join(seen) + err
