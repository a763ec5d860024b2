"""Running `python -m trainer run` as a real process, as the tests need it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from trainer import contract

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "train.py")
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def trainer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "run", *args]


def start(args: list[str], env: dict | None = None, log_path: str | None = None) -> subprocess.Popen:
    full_env = {**os.environ, **(env or {})}
    out = open(log_path, "w") if log_path else subprocess.PIPE
    return subprocess.Popen(trainer_cmd(*args), cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                            text=True)


def run(args: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(trainer_cmd(*args), cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def worker_pids(marker: str) -> list[int]:
    """PIDs of `trainer.worker` processes whose command line contains `marker`, by rank order of start."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "trainer.worker" in cmd and "trainer.torchrun_main" not in cmd and marker in cmd:
            pids.append(int(pid))
    return sorted(pids)


def process_env(pid: int) -> dict[str, str]:
    """A process's environment ({} once it is gone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    return dict(kv.decode(errors="replace").split("=", 1) for kv in raw.split(b"\0") if b"=" in kv)


def worker_rank(pid: int) -> int | None:
    try:
        return int(process_env(pid)["RANK"])
    except (KeyError, ValueError):
        return None


def _this_test(pid: int) -> bool:
    """Whether the running test started `pid`: pytest keeps the test's id in its environment
    (PYTEST_CURRENT_TEST), which every process the test starts inherits."""
    def test_id(env) -> str:
        return env.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    return not test_id(os.environ) or test_id(process_env(pid)) == test_id(os.environ)


def assert_no_workers(marker: str) -> None:
    """No rank of this test's runs is left. Other tests' are not this one's business: a module on
    another xdist worker may run the same script at the same time (CI once took them for ours)."""
    def left() -> list[int]:
        return [p for p in worker_pids(marker) if _this_test(p)]
    deadline = time.monotonic() + 5
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left() == [], f"workers survived: {left()}"


def assert_nothing_left(control: str) -> None:
    """No process of a run is left: ranks forked warm (trainer/warm_rank.py) have the forkserver's
    command line, not trainer.worker's, so a run is known by its control folder in the environment."""
    def left() -> list[int]:
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
                and process_env(int(p)).get(contract.ENV_CONTROL_DIR) == control]
    deadline = time.monotonic() + 5
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left() == [], f"processes of the run survived: {left()}"


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def kill(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
