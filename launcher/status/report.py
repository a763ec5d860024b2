"""`launch status` and `launch list` as text: what launcher/k8s/status.py read, printed."""

from __future__ import annotations

import datetime

from launcher.commandline import print_doc
from launcher.status import admission as kueue_admission
from launcher.status import format as status_fmt
from launcher.status import ledger as restart_ledger


def print_status(doc: dict, *, output: str = "text", all_pods: bool = False) -> None:
    """`doc` is launcher.k8s.status.read_status's."""
    ns, name = doc["namespace"], doc["name"]
    progress, now, (ledger, unread, by_kueue) = doc.pop("_progress"), doc.pop("_now"), doc.pop("_ledger")
    admission = doc.pop("_admission", None)
    if output in ("json", "yaml"):
        print_doc(doc, output)
        return
    all_pods = all_pods or output == "wide"
    pods = [{**p, "name": p["pod"]} for p in doc["pods"]]
    for line in status_fmt.summary_lines(ns, name, doc["state"], pods, doc["expected_pods"], doc["restarts"],
                                         doc["retries_left"], doc["causes"], progress, now):
        print(line)
    for line in kueue_admission.lines(admission, now) if admission is not None else []:
        print("  " + line)
    for c in doc["conditions"]:
        print(f"  {c['type']:<10} {c['status']:<5} {c.get('reason') or ''}: {c.get('message') or ''}")
    if doc["create_failures"] and len(pods) < doc["expected_pods"]:
        print(f"  why: the operator cannot create the pods: {doc['create_failures'][0]}")
    for line in restart_ledger.lines(ledger, by_kueue) if ledger is not None else [restart_ledger.unread_line(unread)]:
        print("  " + line)
    rows = status_fmt.pod_rows(pods, {p["name"]: p["restarts"] for p in pods}, all_pods=all_pods)
    if rows:
        for line in status_fmt.table(status_fmt.POD_HEADER, rows, indent="  "):
            print(line)
    for c in doc["causes"]:
        then = ("retried" if c["retried"] else "not retried") if "exit_code" in c else f"x{c['count']}, pod recreated"
        print(f"  cause {c['replica']:<10} {c['cause']} ({then})")
    for e in doc["events"][-10:]:
        print(f"  event {e['reason']} x{e['count']}: {e['message']}")
    if not all_pods and len(rows) < len(pods):
        print(f"  ({len(pods) - len(rows)} healthy pod(s) not listed: --pods or -o wide lists every pod)")


def print_list(rows: list[dict], ns: str, *, kind: str, output: str = "text") -> None:
    """`rows` are launcher.k8s.jobs.job_rows'; `kind` in the plural ("PyTorchJobs or TrainJobs")."""
    if output in ("json", "yaml"):
        print_doc(rows, output)
        return
    header, table = status_fmt.job_rows(rows, datetime.datetime.now(datetime.timezone.utc), wide=output == "wide")
    print(status_fmt.render(header, table, f"No {kind} of launch in namespace {ns}."))
