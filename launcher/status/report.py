"""`launch status` and `launch list` printed: a JobStatus (launcher/status/model.py) as text or a document."""

from __future__ import annotations

import datetime

from launcher.commandline import print_doc
from launcher.status import admission as kueue_admission
from launcher.status import format as status_fmt
from launcher.status import ledger as restart_ledger
from launcher.status.model import JobStatus, doc


def status_lines(s: JobStatus, *, all_pods: bool = False) -> list[str]:
    """`launch status` as text: the summary, Kueue, conditions, the ledger, unhealthy pods, causes, events."""
    out = status_fmt.summary_lines(s)
    if s.admission is not None:
        out += ["  " + line for line in kueue_admission.lines(s.admission, s.now)]
    out += [f"  {c.type:<10} {c.status:<5} {c.reason or ''}: {c.message or ''}" for c in s.conditions]
    if s.create_failures and len(s.pods) < s.expected_pods:
        out.append(f"  why: the operator cannot create the pods: {s.create_failures[0]}")
    led = s.ledger
    out += ["  " + line for line in (restart_ledger.lines(led.summary, led.by_kueue) if led.summary is not None
                                     else [restart_ledger.unread_line(led.unread or "")])]
    rows = status_fmt.pod_rows(s.pods, all_pods=all_pods)
    if rows:
        out += status_fmt.table(status_fmt.POD_HEADER, rows, indent="  ")
    for c in s.causes:
        then = ("retried" if c.retried else "not retried") if c.exit_code is not None else f"x{c.count}, pod recreated"
        out.append(f"  cause {c.replica:<10} {c.cause} ({then})")
    out += [f"  event {e.reason} x{e.count}: {e.message}" for e in s.events[-10:]]
    if not all_pods and len(rows) < len(s.pods):
        out.append(f"  ({len(s.pods) - len(rows)} healthy pod(s) not listed: --pods or -o wide lists every pod)")
    return out


def print_status(s: JobStatus, *, output: str = "text", all_pods: bool = False) -> None:
    if output in ("json", "yaml"):
        print_doc(doc(s), output)
        return
    print("\n".join(status_lines(s, all_pods=all_pods or output == "wide")))


def print_list(rows: list[dict], ns: str, *, kind: str, output: str = "text") -> None:
    """`rows`: launcher/status/listing.job_rows'; `kind` in the plural ("PyTorchJobs or TrainJobs")."""
    if output in ("json", "yaml"):
        print_doc(rows, output)
        return
    header, table = status_fmt.job_rows(rows, datetime.datetime.now(datetime.timezone.utc), wide=output == "wide")
    print(status_fmt.render(header, table, f"No {kind} of launch in namespace {ns}."))
