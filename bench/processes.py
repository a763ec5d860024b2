"""The bench's processes: every one it starts ends with it, on every way out.

A metric runs in a child process (bench/child.py), which starts servers, `python -m
trainer run` (whose torchrun puts each rank in a session of its own) and torchrun. The
bench makes itself a child subreaper, so whatever such a tree orphans is re-parented to the
bench, not to init, and `end_descendants` finds it, SIGKILLs it and reaps it. The /proc
scan is trainer.processes', the runtime's own for the same job under the supervisor.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from trainer.processes import descendants, proc_table, set_child_subreaper

__all__ = ["adopt_orphans", "cmdline", "end_descendants", "end_tree", "workers_below"]


def adopt_orphans() -> bool:
    """Make this process the one orphans of its descendants are re-parented to (Linux)."""
    return set_child_subreaper(True)


def cmdline(pid: int) -> str:
    """A process's command line, space-joined; "" when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def workers_below(proc: subprocess.Popen) -> list[int]:
    """The training ranks under a `python -m trainer run` process, by PID (torchrun's agent excluded)."""
    table = proc_table()
    below = descendants(proc.pid, {pid: ppid for pid, (ppid, _) in table.items()})
    commands = {pid: cmdline(pid) for pid in below if table[pid][1] != "Z"}
    return sorted(pid for pid, cmd in commands.items()
                  if "trainer.worker" in cmd and "trainer.torchrun_main" not in cmd)


def end_descendants(timeout_s: float = 30.0) -> list[str]:
    """SIGKILL every process below this one and reap them; return what was still running.

    Kills the live ones, reaps this process's own dead children, and repeats: the orphans of
    a killed process are re-parented here (adopt_orphans) and are found by the next pass.
    """
    me = os.getpid()
    found: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        table = proc_table()
        below = descendants(me, {pid: ppid for pid, (ppid, _) in table.items()})
        for pid in below:
            if table[pid][1] != "Z":
                found.setdefault(pid, cmdline(pid))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in below:
            if table[pid][0] == me:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        if not below or time.monotonic() > deadline:
            return [f"{pid} {cmd}" for pid, cmd in found.items()]
        time.sleep(0.05)


def end_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a child and every process below it, and wait for the child (a no-op once it has exited).

    What it orphans is re-parented to this process and ended by end_descendants.
    """
    if proc.poll() is not None:
        return
    table = proc_table()
    for pid in [proc.pid, *descendants(proc.pid, {pid: ppid for pid, (ppid, _) in table.items()})]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
