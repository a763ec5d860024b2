"""The processes below the supervisor: none may outlive it, and none may linger as a zombie.

torchrun starts its workers in sessions of their own, so a killed torchrun's ranks are
reached neither by its process group nor by the container's end outside a container. The
supervisor makes itself a child subreaper (PR_SET_CHILD_SUBREAPER): orphans below it are
re-parented to it, not to init, so it can find and kill them on every exit path.

In a container the supervisor is PID 1 anyway, and either way every orphan that ends stays
a zombie until its new parent waits for it: a zombie holds a PID, and under a pids cgroup
limit enough of them stop new processes from starting. `reap_orphans` waits for those,
never for the supervisor's own torchrun, whose exit status `subprocess.Popen` collects by
PID (a wait(-1) here would steal it, and Popen would then report 0 for a failed torchrun).

One /proc scanner for all of this: `proc_table`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Mapping

#: linux/prctl.h: orphaned descendants are reparented to the nearest subreaper instead of init.
PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper(on: bool) -> bool:
    """Make this process a child subreaper (Linux >= 3.4); False where the kernel or libc says no."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(root: int, parents: Mapping[int, int]) -> list[int]:
    """Every process below `root` in a {pid: parent pid} map, parents before their children."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = sorted(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        if pid != root and pid not in out:
            out.append(pid)
            todo.extend(sorted(children.get(pid, [])))
    return out


def proc_table() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, state letter)} of every process this one can see, from /proc/PID/stat."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # The command name (field 2) may hold spaces and parentheses: the rest follows the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        with contextlib.suppress(IndexError, ValueError):
            out[int(name)] = (int(fields[1]), fields[0].decode())
    return out


def parent_map() -> dict[int, int]:
    """{pid: parent pid} of every process this one can see."""
    return {pid: ppid for pid, (ppid, _) in proc_table().items()}


def zombie_children(parent: int, table: Mapping[int, tuple[int, str]], keep: frozenset[int] = frozenset()) -> list[int]:
    """The zombies among `parent`'s children in a proc_table, except those in `keep`."""
    return sorted(pid for pid, (ppid, state) in table.items() if ppid == parent and state == "Z" and pid not in keep)


def reap_orphans(keep: frozenset[int] = frozenset()) -> int:
    """Wait for every zombie child of this process but those in `keep`; return how many."""
    n = 0
    for pid in zombie_children(os.getpid(), proc_table(), keep):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
            n += 1
    return n


def start_time(pid: int) -> int | None:
    """When a process started (clock ticks since boot, /proc/PID/stat field 22); None when it is gone.

    With the PID it names one process for good: a PID reused later has a later start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rfind(b")") + 2:].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_running(pid: int, started: int | None) -> bool:
    """Whether `pid` still names the process that started at `started` (start_time's ticks; None: any),
    and it is not a zombie: a killed process whose parent has not waited for it yet runs no more."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rfind(b")") + 2:].split()
        state, since = fields[0].decode(), int(fields[19])
    except (OSError, IndexError, ValueError):
        return False
    return state not in ("Z", "X") and (started is None or since == started)


def pid_namespace() -> str:
    """This process's PID namespace (the inode of /proc/self/ns/pid), "0" where unknown: PIDs mean
    something only inside one, and a spool may be shared by pods on one host."""
    try:
        link = os.readlink("/proc/self/ns/pid")
    except OSError:
        return "0"
    return "".join(c for c in link if c.isdigit()) or "0"


def owner_tag(pid: int | None = None) -> str:
    """`<pid namespace>-<pid>-<start time>`: the process that owns a file or folder in a shared spool, for good."""
    pid = os.getpid() if pid is None else pid
    return f"{pid_namespace()}-{pid}-{start_time(pid) or 0}"


def parse_owner_tag(text: str) -> tuple[str, int, int] | None:
    """(pid namespace, pid, start time) from a name's part that begins with owner_tag(); None if it does not."""
    parts = text.split("-")
    if len(parts) < 3 or not all(p.isdigit() for p in parts[:3]):
        return None
    return parts[0], int(parts[1]), int(parts[2])


def owner_gone(owner: tuple[str, int, int]) -> bool:
    """Whether an owner_tag's process is known to be gone: only one of this PID namespace can be judged."""
    return owner[0] == pid_namespace() and not is_running(owner[1], owner[2])
