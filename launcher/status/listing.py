"""`launch list`'s records of the jobs read (pure): name, state, pods, created, and Kueue's admission."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

from launcher import backends
from launcher.status import admission as kueue

if TYPE_CHECKING:
    from launcher.k8s.kueue import KueueReads


def job_records(jobs: Sequence[dict], queued: Mapping[str, KueueReads] | None = None) -> list[dict]:
    """One record per job; with `queued` (launcher/k8s/kueue.read_kueue_all's), the admission of each behind Kueue."""
    queued = queued or {}
    out = []
    for j in jobs:
        name, backend = j["metadata"]["name"], backends.of(j)
        row = {"name": name, "state": backend.state(j), "pods": backend.expected_pods(j),
               "created": j["metadata"].get("creationTimestamp")}
        if name in queued:
            row["admission"] = kueue.doc(kueue.of_reads(j, queued[name]))
        out.append(row)
    return out
