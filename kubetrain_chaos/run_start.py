"""One start of `python -m trainer run` under the chaos driver, and its processes.

Every process is found through the runtime's own records and trainer.processes (the one /proc
reader): the supervisor is our child, everything it started is below it in the process tree
(it is a child subreaper, so a killed torchrun's ranks stay below it too), and each rank's
wrapper records its PID in the control folder. A rank's DataLoader workers are its child
processes: they inherit RANK and the command line, so only the recorded PID says which is the rank.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time

from trainer import contract
from trainer.control_folder import Progress, RankPid
from trainer.processes import descendants, proc_table


def send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def live(pids: list[int]) -> list[int]:
    """Those of `pids` that are running (not gone, not zombies)."""
    table = proc_table()
    return [p for p in pids if p in table and table[p][1] != "Z"]


@dataclasses.dataclass
class RunStart:
    proc: subprocess.Popen
    control: str
    log_path: str
    in_place_left: int = 0  # in-place restarts its supervisor was given and has not made
    #: The log's first line of the current attempt: after its supervisor's last in-place restart line.
    log_from: int = 0
    in_place_seen: int = 0  # in-place restart lines the driver has accounted for

    def progress(self) -> int:
        """The step every rank has reached (their heartbeats), 0 before the first."""
        steps = [p.step for p in Progress.read_all(self.control).values()]
        return min(steps) if steps else 0

    def tree(self) -> list[int]:
        """Every live process below the supervisor."""
        table = proc_table()
        return [p for p in descendants(self.proc.pid, {pid: pp for pid, (pp, _) in table.items()})
                if table[p][1] != "Z"]

    def ranks(self) -> dict[int, int]:
        """rank -> pid of this attempt's live ranks, as their wrappers recorded them."""
        below = set(self.tree())
        return {rank: pid for rank, pid in RankPid.live(self.control).items() if pid in below}

    @staticmethod
    def loader_workers(rank_pid: int) -> list[int]:
        """The live child processes of a rank: its DataLoader workers."""
        return sorted(pid for pid, (ppid, state) in proc_table().items() if ppid == rank_pid and state != "Z")

    def kill_all(self) -> None:
        """SIGKILL every process of the attempt at once, as a node loss would.

        Frozen first (SIGSTOP), so the run folder shows one moment; the supervisor last: while it
        lives, orphans of the processes killed before it are re-parented to it and found again."""
        if self.proc.poll() is None:
            send(self.proc.pid, signal.SIGSTOP)
        for _ in range(50):
            pids = self.tree()
            if not pids:
                break
            for pid in pids:
                send(pid, signal.SIGSTOP)
            for pid in pids:
                send(pid, signal.SIGKILL)
            time.sleep(0.02)
        self.proc.kill()

    def exit_code(self, timeout: float) -> int:
        """Wait for the supervisor's exit (killing everything at the timeout); then for its ranks to be gone."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            rc = self.proc.wait()
        ranks = list(RankPid.live(self.control).values())
        deadline = time.monotonic() + 10  # the supervisor leaves no rank behind; a restart must not race one
        while live(ranks) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in live(ranks):
            send(pid, signal.SIGKILL)
        return rc if rc >= 0 else 128 - rc

    def log_lines(self) -> list[str]:
        with open(self.log_path, errors="replace") as f:
            return f.read().splitlines()

    def logged(self) -> dict[str, int | None]:
        """The contract's log lines (LOG_RESUMED, LOG_PREEMPTED) in this attempt's log, since its last in-place restart."""
        return contract.parse_runtime_log(self.log_lines()[self.log_from:])

    def in_place_restarts(self) -> tuple[int, int]:
        """(in-place restarts its supervisor logged so far, the index of the line after the last one)."""
        lines = self.log_lines()
        marks = [i for i, line in enumerate(lines) if contract.parse_runtime_log([line])["in_place"] is not None]
        return len(marks), (marks[-1] + 1 if marks else 0)


def wait_for(predicate, attempt: RunStart, timeout: float) -> bool:
    """Poll until predicate() or the attempt exits or timeout; True if the predicate held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if attempt.proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False
