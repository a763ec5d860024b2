"""`launch status JOB --timeline [FILE.svg]`: the job's restart ledger as a picture (timeline.py).

Reads the ledger as `launch status` does (launcher/status/ledger.py: the job's checkpoint folder,
through launcher/objectstore.py, within its time limit); without FILE the text timeline follows the status, with
FILE.svg it is written there. A ledger that cannot be read is one line on stderr and exit 1.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Mapping

from launcher import objectstore
from launcher.status import ledger as restart_ledger
from launcher.status import timeline
from trainer import contract


def read_attempts(job: dict, read: Callable[[str], Mapping[str, bytes | None]] = objectstore.read_json_objects,
                  timeout: float = restart_ledger.READ_TIMEOUT) -> tuple[list[contract.Attempt] | None, str]:
    """(attempts, where) of the job's ledger; (None, why not) when it cannot be read in time."""
    where = restart_ledger.location(job)
    if where is None:
        return None, "the job has no checkpoint folder"
    path = restart_ledger.folder(where[0], where[1])
    out: dict = {}

    def run() -> None:
        try:
            out["objects"] = dict(read(path))
        except BaseException as e:  # noqa: BLE001 - one line, never a traceback
            out["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"[:160]

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if "objects" in out:
        attempts = contract.parse_ledger(out["objects"])
        return (attempts, path) if attempts else (None, f"no attempts recorded in {path} yet")
    return None, f"cannot read {path} ({out.get('error') or f'no answer within {timeout:g}s'})"


def show(job: dict, dest: str, now: float | None = None, **read_kw) -> int:
    """Print the text timeline (dest "-") or write the SVG to `dest`; 1 with one line when there is no ledger."""
    attempts, where = read_attempts(job, **read_kw)
    if attempts is None:
        print(f"launch: no timeline: {where}", file=sys.stderr)
        return 1
    tl = timeline.build(attempts, time.time() if now is None else now)
    if dest == "-":
        print()
        print("\n".join(timeline.text(tl)))
        return 0
    name = (job.get("metadata") or {}).get("name", "")
    with open(dest, "w", encoding="utf-8") as f:
        f.write(timeline.svg(tl, title=f"{name}: {where}"))
    print(f"timeline written to {dest}")
    return 0
