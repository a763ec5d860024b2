"""A Kueue preemption in `launch status`'s incident view: each eviction matched to the attempt it ended."""

from __future__ import annotations

import calendar

from launcher.status import admission as kueue
from launcher.status import evictions
from launcher.status import ledger as rl
from tests.unit.test_kueue_admission import JOB, events, load
from trainer import contract


def t(hms: str) -> float:
    h, m, s = (int(x) for x in hms.split(":"))
    return float(calendar.timegm((2026, 3, 1, h, m, s)))


def attempt(n: int, start: str, end: str | None, code: int | None, resumed: int | None, committed: int | None):
    return contract.Attempt(name=f"a{n}-n0.json", node_rank=0, started_at=t(start), ended_at=t(end) if end else None,
                            code=code, resumed_from=resumed, committed=committed,
                            committed_at=t(end) - 5 if end else None, cause="SIGTERM" if code == 143 else None)


# Started at 10:00:30; SIGTERM'd twice (Kueue evicted at 10:05:00 and 10:20:00), and once failed on its own.
ATTEMPTS = [attempt(1, "10:00:30", "10:05:20", 143, None, 100), attempt(2, "10:06:10", "10:12:00", 1, 100, 100),
            attempt(3, "10:12:30", "10:20:25", 143, 100, 300), attempt(4, "10:25:30", None, None, 300, None)]


def incidents():
    return rl.incidents(contract.summarize_ledger(ATTEMPTS, now=t("10:30:00")))


def test_each_eviction_kueue_recorded_takes_the_exit_143_it_caused():
    a = kueue.summarize(JOB, load("workload-readmitted.json"), events())
    got = evictions.match(incidents(), a.evictions)
    assert sorted(got) == ["a1-n0.json", "a3-n0.json"]  # the exit 1 in between is its own failure
    assert got["a1-n0.json"].message.startswith("Preempted to accommodate a workload (UID: 0f3a")
    assert got["a3-n0.json"].message.startswith("Preempted to accommodate a workload (UID: 7d2e")


def test_without_events_only_the_latest_eviction_is_known_and_matched():
    a = kueue.summarize(JOB, load("workload-readmitted.json"))  # events expired: the conditions alone
    got = evictions.match(incidents(), a.evictions)
    assert list(got) == ["a3-n0.json"]  # before the re-admission at 10:25: the newest stop before it


def test_an_eviction_with_no_stop_near_it_matches_nothing():
    far = kueue.Eviction("Preempted", "m", at=kueue.parse_time("2026-03-01T09:00:00Z"), preemption="InClusterQueue")
    assert evictions.match(incidents(), [far]) == {}
    assert evictions.match(incidents(), []) == {}


def test_the_ledger_shows_kueue_as_the_cause_and_no_retry_spent():
    a = kueue.summarize(JOB, load("workload-readmitted.json"), events())
    summary = contract.summarize_ledger(ATTEMPTS, now=t("10:30:00"))
    by_kueue = evictions.match(rl.incidents(summary), a.evictions)
    rows = rl.lines(summary, by_kueue)[2:]
    kueue_cause = "exit 143: preempted by Kueue, no retry spent (InClusterQueue: Preempted to"
    assert [kueue_cause in r for r in rows] == [True, False, True]
    assert "exit 1: " in rows[1]
    doc = rl.doc(summary, by_kueue)["incidents"]
    assert doc[0]["cause"].startswith("preempted by Kueue (InClusterQueue: Preempted to accommodate")
    assert doc[0]["retry_spent"] is False and "retry_spent" not in doc[1]
    assert rl.lines(summary) != rl.lines(summary, by_kueue)  # without Kueue: the runtime's own cause
