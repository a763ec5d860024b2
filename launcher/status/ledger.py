"""The runtime's restart ledger in `launch status`: each incident and the job's goodput.

The runtime records each start of the run in `<checkpoint>/<run-id>/attempts/*.json` (see
trainer/contract/). When the launcher can read that folder (launcher/objectstore.py: a local
path, or s3:// and the like with the user's own credentials) `launch status` shows what each
restart cost; when it cannot, one dim line says so and the rest of the status stands. Pure:
only the rules of trainer.contract, as the runtime uses them; the kubetrain_chaos report
carries a LedgerSummary and `lines` renders it.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping

from launcher import backends
from launcher.status import evictions
from launcher.status.format import table
from trainer import contract

#: Seconds the ledger read may take (it runs while the cluster is read): a bucket that does not
#: answer, or credentials that take long to find, never hold `launch status` up for longer.
READ_TIMEOUT = 5.0
HEADER = ["STARTED", "FROM STEP", "ENDED", "REDONE", "LOST", "CAUSE"]


def location(job: dict) -> tuple[str, str, int | None] | None:
    """(checkpoint URI, run id, --max-restarts) from the job's pod template env; None without a checkpoint."""
    backend = backends.of(job)
    for template in backend.pod_templates(job):
        for c in (template.get("spec") or {}).get("containers") or []:
            if c.get("name") != backend.CONTAINER:
                continue
            env = {e.get("name"): e.get("value") for e in c.get("env") or []}
            uri, run_id = env.get(contract.ENV_CHECKPOINT_URI), env.get(contract.ENV_RUN_ID)
            if not uri or not run_id:
                return None
            try:
                budget = int(env[contract.ENV_MAX_RESTARTS]) if env.get(contract.ENV_MAX_RESTARTS) else None
            except ValueError:
                budget = None
            return uri, run_id, budget
    return None


def folder(uri: str, run_id: str) -> str:
    return "/".join([uri.rstrip("/"), run_id.strip("/"), contract.ATTEMPTS_DIR])


def summarize(where: tuple[str, str, int | None] | None, objects: Mapping[str, bytes | None] | None,
              error: str | None, now: float, timeout: float = READ_TIMEOUT) -> tuple[contract.LedgerSummary | None,
                                                                                     str | None]:
    """(summary, None), or (None, why not): what launcher/objectstore.py read of the folder at `where` (location()).

    `objects` None and `error` None: the read did not end within `timeout` seconds.
    """
    if where is None:
        return None, "the job has no checkpoint folder"
    path = folder(where[0], where[1])
    if objects is not None:
        attempts = contract.parse_ledger(objects)
        if not attempts:
            return None, f"no attempts recorded in {path} yet"
        return contract.summarize_ledger(attempts, now, where[2]), None
    if error is not None:
        return None, f"cannot read {path} ({error})"
    return None, f"cannot read {path} (no answer within {timeout:g}s)"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t is not None else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _short(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def doc(summary: contract.LedgerSummary, kueue: Mapping[str, Any] | None = None) -> dict:
    """The ledger part of `launch status -o json|yaml`; `kueue`: {attempt: the Kueue eviction that ended it}."""
    kueue = kueue or {}
    return {"attempts": summary.attempts,
            "goodput": round(summary.goodput, 4) if summary.goodput is not None else None,
            "first_start": _when(summary.first_start) if summary.first_start is not None else None,
            "crash_loop": summary.crash_loop is not None,
            "restarts_in_place": summary.in_place,
            "incidents": [{"started": _when(i.started_at), "ended": _when(i.ended_at) if i.ended_at else None,
                           "node_rank": i.node_rank, "kind": i.kind, "code": i.code,
                           "cause": kueue[i.attempt].cause if i.attempt in kueue else i.cause,
                           **({"retry_spent": False} if i.attempt in kueue else {}),
                           "resumed_from": i.resumed_from, "committed": i.committed,
                           "steps_redone": i.steps_redone, "seconds_lost": i.seconds_lost,
                           "recovered_in_place": i.recovered_in_place}
                          for i in incidents(summary)]}


def incidents(summary: contract.LedgerSummary) -> list[contract.Incident]:
    """The attempts that ended without finishing (preempted or failed): the restarts and what they cost."""
    return [i for i in summary.incidents if i.kind in ("preempted", "failed")]


def lines(summary: contract.LedgerSummary, kueue: Mapping[str, Any] | None = None) -> list[str]:
    """`launch status`'s ledger block: one summary line, then a table of the incidents (none: no table).

    `kueue`: {attempt name: the Kueue eviction that ended it} (launcher/status/evictions.py), shown as its cause.
    """
    kueue = kueue or {}
    shown = incidents(summary)
    lost = sum(i.seconds_lost or 0.0 for i in shown)
    redone = sum(i.steps_redone or 0 for i in shown)
    goodput = f"{summary.goodput:.0%}" if summary.goodput is not None else "-"
    head = (f"ledger    goodput {goodput} since {_when(summary.first_start)}, {summary.attempts} start(s), "
            f"{len(shown)} incident(s)" + (f", {redone} step(s) redone, {_duration(lost)} lost" if shown else "")
            + (f", {summary.in_place} restart(s) in place" if summary.in_place else ""))
    if summary.crash_loop is not None:
        head += f"; crash loop: stopped after {len(summary.crash_loop)} failed start(s) in a row"
    rows = [[_when(i.started_at), "-" if i.resumed_from is None else str(i.resumed_from),
             _when(i.ended_at), "-" if i.steps_redone is None else str(i.steps_redone), _duration(i.seconds_lost),
             _short(("[in place] " if i.recovered_in_place else "") + (f"exit {i.code}: " if i.code is not None else "")
                    + (evictions.cause(kueue[i.attempt]) if i.attempt in kueue else i.cause))] for i in shown]
    return [head] + (table(HEADER, rows, indent="  ") if rows else [])


def unread_line(why: str) -> str:
    """One dim line (dim only on a terminal): the ledger was not shown, and why."""
    text = f"ledger    not shown: {why}"
    return f"\x1b[2m{text}\x1b[0m" if sys.stdout.isatty() else text
