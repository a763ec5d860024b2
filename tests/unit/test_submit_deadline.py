"""The submitter makes the operator notice a run past its deadline (v1.8 checks it only on a reconcile)."""

import calendar
import time

from launcher.k8s import jobs
from launcher.schedule import submitter as submit
from launcher.schedule.spec import SubmitExit


def job(state: str | None, deadline: int | None = 3, started: str | None = "2026-12-02T10:00:00Z") -> dict:
    j: dict = {"spec": {"runPolicy": {}}, "status": {}}
    if deadline is not None:
        j["spec"]["runPolicy"]["activeDeadlineSeconds"] = deadline
    if started:
        j["status"]["startTime"] = started
    if state:
        j["status"]["conditions"] = [{"type": state, "status": "True"}]
    return j


T0 = calendar.timegm(time.strptime("2026-12-02T10:00:00Z", "%Y-%m-%dT%H:%M:%SZ"))


def test_past_deadline_only_with_a_deadline_and_a_start_time():
    assert not submit.past_deadline(job(None), T0 + 3)
    assert submit.past_deadline(job(None), T0 + 3.5)
    assert not submit.past_deadline(job(None, deadline=None), T0 + 10**6)
    assert not submit.past_deadline(job(None, started=None), T0 + 10**6)


def test_a_run_past_its_deadline_is_touched_until_the_operator_fails_it(monkeypatch):
    states = iter([None, None, None, "Failed"])
    touched = []
    monkeypatch.setattr(jobs, "get_job", lambda api, ns, name, required=True: job(next(states)))
    monkeypatch.setattr(jobs, "touch_job", lambda api, ns, name: touched.append(name))
    clock = iter([T0 + 1, T0 + 5, T0 + 6, T0 + 30]).__next__
    code = submit.wait_for(None, "ns", "run", poll_seconds=1, sleep=lambda s: None, clock=clock)
    assert code == SubmitExit.JOB_FAILED
    assert touched == ["run"]  # once past the deadline, not again within NUDGE_EVERY_SECONDS
