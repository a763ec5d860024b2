"""launcher/status.py: restarts from pod UIDs, the summary, tables, ages; and `launch` against broken API servers."""

from __future__ import annotations

import datetime
import socket
import threading

import pytest

from launcher import records
from launcher.status import counting as ct
from launcher.status import format as st
from launcher.status.model import Cause, JobStatus, Ledger, PodStatus, Progress
from launcher.cli import main

T0 = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def job(name="j", uid="job-uid", workers=2, created=T0):
    return {"metadata": {"name": name, "uid": uid, "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1}, "Worker": {"replicas": workers}},
                     "runPolicy": {"backoffLimit": 3}}}


def pod(name, uid, phase="Running", owner="job-uid", **kw):
    replica = name.split("-", 1)[1]
    return {"name": name, "pod": name, "uid": uid, "owner_uid": owner, "replica": replica, "phase": phase,
            "node": "n0", **kw}


def ev(name, uid, reason="Scheduled", created=at(1), message="", kind="Pod", count=1):
    return {"kind": kind, "name": name, "uid": uid, "reason": reason, "message": message, "count": count,
            "created": created}


def typed(p: dict) -> PodStatus:
    return PodStatus(pod=p["pod"], uid=p["uid"], replica=p["replica"], phase=p["phase"], node=p["node"],
                     restarts=0, deleting=False, unschedulable=p.get("unschedulable"))


def status(pods, expected, restarts=0, left=None, causes=(), progress=Progress(), now=T0, state="Running",
           trainer=None):
    return JobStatus(name="j", namespace="ns", uid="u", state=state, conditions=(), replicas={},
                     expected_pods=expected, pods=tuple(typed(p) for p in pods), restarts=restarts,
                     restarts_by_pod={}, retries_left=left, causes=tuple(causes), create_failures=(),
                     progress=progress, events=(), ledger=Ledger(None, "none"), admission=None, now=now,
                     trainer=trainer)


def test_natural_order():
    names = ["worker-10", "worker-2", "master-0", "worker-100", "worker-1"]
    assert sorted(names, key=records.natural_key) == ["master-0", "worker-1", "worker-2", "worker-10", "worker-100"]


def test_a_fresh_job_of_128_pods_has_no_restarts_however_many_events_merge():
    j = job(workers=127)
    pods = [pod("j-master-0", "m0")] + [pod(f"j-worker-{i}", f"w{i}") for i in range(127)]
    # Each pod's Scheduled event, some repeated (count > 1) as aggregated events are.
    events = [ev(p["name"], p["uid"], count=5) for p in pods] + [ev("j-worker-3", "w3", reason="Pulled", count=9)]
    restarts = ct.count_restarts(ct.pod_incarnations(j, pods, events))
    assert sum(restarts.values()) == 0 and len(restarts) == 128


def test_a_recreated_replica_counts_once_per_new_uid():
    j = job(workers=1)
    pods = [pod("j-master-0", "m0-c"), pod("j-worker-0", "w0")]
    events = [ev("j-master-0", "m0-a"), ev("j-master-0", "m0-b", created=at(50)), ev("j-master-0", "m0-c", at(90)),
              ev("j-worker-0", "w0")]
    assert ct.count_restarts(ct.pod_incarnations(j, pods, events)) == {"j-master-0": 2, "j-worker-0": 0}


def test_a_trainjobs_replacement_pods_have_new_names_and_count_as_incarnations_of_their_node():
    # A Job names each pod <job>-node-0-<rank>-<random suffix>: the replacement is a new name.
    j = {"kind": "TrainJob", "metadata": {"name": "j", "uid": "job-uid",
                                          "creationTimestamp": T0.strftime("%Y-%m-%dT%H:%M:%SZ")},
         "spec": {"trainer": {"numNodes": 2}}}
    pods = [pod("j-node-0-0-aaaaa", "n0"), pod("j-node-0-1-ccccc", "n1-c")]
    events = [ev("j-node-0-0-aaaaa", "n0"), ev("j-node-0-1-bbbbb", "n1-b"), ev("j-node-0-1-ccccc", "n1-c", at(60)),
              ev("j-node-0-10-zzzzz", "other")]  # no node 10: not this job's replica
    assert ct.count_restarts(ct.pod_incarnations(j, pods, events)) == {"j-node-0-0": 0, "j-node-0-1": 1}
    assert ct.incarnation_key({"j-master-0"}, "j-master-0") == "j-master-0"


def test_pods_and_events_of_an_earlier_job_of_the_same_name_do_not_count():
    j = job(workers=0, created=at(100))
    j["spec"]["pytorchReplicaSpecs"].pop("Worker")
    pods = [pod("j-master-0", "old", owner="old-job", phase="Running"), pod("j-master-0", "new")]
    events = [ev("j-master-0", "old", created=at(10)),  # the old pod's birth, before this job
              ev("j-master-0", "old", reason="Killing", created=at(101)),
              ev("j-master-0", "new", created=at(102))]
    incarnations = ct.pod_incarnations(j, pods, events)
    assert incarnations == {"j-master-0": {"new"}}
    assert ct.count_restarts(incarnations) == {"j-master-0": 0}


def test_causes_count_losses_per_pod_uid_and_exits_only_from_this_job():
    j = job(workers=0)
    pods = [pod("j-master-0", "b")]
    pod_events = [ev("j-master-0", "a"), ev("j-master-0", "b", created=at(20)),
                  ev("j-master-0", "a", reason="TaintManagerEviction", message="Marking for deletion", count=3),
                  ev("j-master-0", "a", reason="TaintManagerEviction", message="Cancelling deletion"),
                  ev("j-master-0", "zz", reason="Preempted")]  # a UID that is not this job's
    job_events = [ev("j", "job-uid", reason="ExitedWithCode", kind="PyTorchJob",
                     message="Pod: ns.j-master-0 exited with code 143"),
                  ev("j", "other-uid", reason="ExitedWithCode", kind="PyTorchJob",
                     message="Pod: ns.j-master-0 exited with code 1")]
    inc = ct.pod_incarnations(j, pods, pod_events)
    causes = ct.restart_causes(j, job_events, pod_events, inc)
    assert sorted((c["replica"], c.get("exit_code") or 0, c.get("count") or 0) for c in causes) == [
        ("master-0", 0, 1), ("master-0", 143, 0)]
    # One restart, and it was an eviction: the budget is untouched.
    assert ct.retries_left(3, 1, causes) == 3


def test_a_replacement_deleted_before_it_was_placed_spends_no_retry():
    # Events of a CI run: the taint-eviction controller deleted "a" (evicted) and then, by name, "b" while
    # it was still Pending; the operator created "c". Two recreations, one loss, and "b" never ran.
    j = job(workers=0)
    pods = [pod("j-master-0", "c")]
    pod_events = [ev("j-master-0", "a"),
                  ev("j-master-0", None, reason="TaintManagerEviction", message="Marking for deletion"),
                  ev("j-master-0", "b", reason="FailedScheduling"), ev("j-master-0", "c", reason="FailedScheduling"),
                  ev("j-master-0", "c")]
    inc = ct.pod_incarnations(j, pods, pod_events)
    assert ct.count_restarts(inc)["j-master-0"] == 2
    assert ct.never_placed(inc, pods, pod_events) == 1
    causes = ct.restart_causes(j, [], pod_events, inc)
    assert ct.retries_left(3, 2 - 1, causes) == 3
    # The pod that is there now counts as placed whether or not it is yet: it is not gone.
    assert ct.never_placed(inc, pods, pod_events[:-1]) == 1
    # The kubelet's events place a pod whose Scheduled event was dropped.
    assert ct.never_placed(inc, pods, pod_events + [ev("j-master-0", "b", reason="Started")]) == 0
    # A replica's first pod gone unplaced (a Pending worker deleted by a cleanup) is no recreation:
    # it cannot cancel another replica's restart.
    w = job(workers=1)
    pods2 = [pod("j-master-0", "m2")]
    events2 = [ev("j-master-0", "m1"), ev("j-master-0", "m2"), ev("j-worker-0", "w1", reason="FailedScheduling")]
    inc2 = ct.pod_incarnations(w, pods2, events2)
    assert sum(ct.count_restarts(inc2).values()) == 1 and ct.never_placed(inc2, pods2, events2) == 0


def test_a_trainjobs_posted_progress_is_a_line_of_the_summary_and_a_key_of_the_json():
    from launcher.status import build
    from launcher.status.model import doc

    posted = {"progressPercentage": 42, "estimatedRemainingSeconds": 100, "lastUpdatedTime": "2026-01-01T12:00:00Z",
              "metrics": [{"name": "step", "value": "126"}, {"name": "total_steps", "value": "300"},
                          {"name": "last_committed_step", "value": "120"}, {"name": "goodput", "value": "0.950"}]}
    trainer = build.trainer_progress({"status": {"trainerStatus": posted}})
    s = status([pod("j-node-0-0", "a")], 1, trainer=trainer, now=at(3))
    assert st.summary_lines(s)[-1] == "  trainer   42% (step 126 of 300), 100s left; committed 120; goodput 0.950; posted 3s ago"
    assert doc(s)["trainer_status"] == {"progress_percent": 42, "eta_seconds": 100, "updated": "2026-01-01T12:00:00+00:00",
                                        "metrics": {"step": "126", "total_steps": "300", "last_committed_step": "120",
                                                    "goodput": "0.950"}}
    # Before the script declares a total: the step alone. A PyTorchJob has no trainerStatus: no line, no key.
    early = build.trainer_progress({"status": {"trainerStatus": {"metrics": [{"name": "step", "value": "7"}]}}})
    assert st.trainer_line(status([], 1, trainer=early)) == "step 7"
    assert build.trainer_progress({"status": {"conditions": []}}) is None
    assert "trainer_status" not in doc(status([], 1))


def test_summary_first_then_only_unhealthy_pods():
    pods = [pod("j-master-0", "m")] + [pod(f"j-worker-{i}", f"w{i}") for i in range(11)]
    pods[5] = pod("j-worker-4", "w4", phase="Pending", node=None,
                  unschedulable="0/5 nodes are available: 5 Insufficient nvidia.com/gpu.")
    lines = st.summary_lines(status(pods, 12, left=3, progress=Progress(step=1200, at=at(0), resumed_from=1200),
                                    now=at(300)))
    assert lines[0] == "ns/j: Running  (restarts 0, 3 retries left)"
    assert lines[1] == "  pods      11/12 Running  (11 Running, 1 Pending)"
    assert lines[2] == "  step      1200 committed 5m ago; resumed from step 1200"
    rows = st.pod_rows([typed(p) for p in pods], all_pods=False)
    assert rows == [["worker-4", "Pending", "-", "0", "unschedulable: 0/5 nodes are available: 5 Insufficient "
                     "nvidia.com/gpu."]]
    every = [r[0] for r in st.pod_rows([typed(p) for p in pods], all_pods=True)]
    assert every[:4] == ["master-0", "worker-0", "worker-1", "worker-2"] and every[-1] == "worker-10"


def test_all_running_says_so_without_a_breakdown():
    pods = [pod(f"j-worker-{i}", f"w{i}") for i in range(128)]
    assert st.summary_lines(status(pods, 128))[1] == "  pods      128/128 Running"
    assert st.summary_lines(status(pods, 128))[0] == "ns/j: Running  (restarts 0)"


def test_a_job_whose_condition_lags_its_running_pods_says_both():
    pods = [pod(f"j-worker-{i}", f"w{i}") for i in range(512)]
    head = st.summary_lines(status(pods, 512, left=3, state="Pending"))[0]
    assert head == ("ns/j: Pending, all 512 pods Running (the operator has not updated the job's condition yet)"
                    "  (restarts 0, 3 retries left)")
    assert st.summary_lines(status(pods[:10], 512, state="Pending"))[0] == "ns/j: Pending  (restarts 0)"


def test_restarts_by_cause_in_the_summary():
    causes = [Cause("j-master-0", "master-0", "x", True, exit_code=143),
              Cause("j-worker-1", "worker-1", "y", True, exit_code=143),
              Cause("j-worker-2", "worker-2", "z", True, reason="TaintManagerEviction", count=2)]
    lines = st.summary_lines(status([], 3, restarts=4, left=1, causes=causes))
    assert "  restarts  2 exit 143, 2 TaintManagerEviction" in lines


def test_create_failures_newest_first_and_deduplicated():
    events = [ev("j", "u", reason="FailedCreatePod", kind="PyTorchJob", created=at(1),
                  message='pods "j-worker-0" is forbidden: violates PodSecurity "restricted:latest"'),
              ev("j", "u", reason="FailedCreatePod", kind="PyTorchJob", created=at(5), message="quota exceeded"),
              ev("j", "u", reason="SuccessfulCreatePod", kind="PyTorchJob", created=at(6), message="Created pod")]
    assert records.create_failures(events) == ["quota exceeded",
                                          'pods "j-worker-0" is forbidden: violates PodSecurity "restricted:latest"']


def test_newest_commit_from_timestamped_log():
    got = ct.newest_commit(["2026-01-01T12:00:01.123456789Z step 1",
                            "2026-01-01T12:00:02.5Z resuming after step 1200",
                            "2026-01-01T12:01:00Z preempted: checkpoint step 1300 committed"])
    assert (got["step"], got["resumed_from"], got["preempted_at"], got["at"]) == (1300, 1200, 1300, at(60))


def test_tables_have_headers_natural_widths_and_an_empty_message():
    header, rows = st.job_rows([{"name": "b-10", "state": "Running", "pods": 2, "created": "2026-01-01T11:00:00Z"},
                                {"name": "b-9", "state": "Failed", "pods": 1, "created": "2026-01-01T11:59:15Z"}], T0)
    text = st.render(header, rows, "none").splitlines()
    assert text == ["NAME  STATE    PODS  AGE", "b-9   Failed   1     45s", "b-10  Running  2     60m"]
    assert st.render(header, [], "No PyTorchJobs of launch in namespace x.") == "No PyTorchJobs of launch in namespace x."
    header, rows = st.schedule_rows([{"name": "n", "schedule": "0 3 * * *", "time_zone": "Europe/Berlin",
                                      "suspended": False, "last_schedule": None,
                                      "runs": [{"name": f"n-{i}", "state": "Succeeded"} for i in range(5)]}], T0)
    assert rows == [["n", "0 3 * * * (Europe/Berlin)", "no", "never", "n-2 Succeeded, n-3 Succeeded, n-4 Succeeded"]]


@pytest.mark.parametrize("seconds,text", [(5, "5s"), (119, "119s"), (600, "10m"), (7300, "2h"), (3 * 86400, "3d")])
def test_age(seconds, text):
    assert records.age(T0, at(seconds)) == text


def test_pod_security_warning_only_for_multi_pod_jobs_in_restricted_namespaces():
    from launcher.k8s.preflight import pod_security_warning

    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}
    assert pod_security_warning(restricted, 1) is None
    assert pod_security_warning({"pod-security.kubernetes.io/enforce": "baseline"}, 4) is None
    assert "k8s/operator/pytorch-init-container.yaml.tmpl" in pod_security_warning(restricted, 2)


# --- broken API servers: one line naming the server, non-zero, never a hang ----------------


def kubeconfig_for(tmp_path, port: int) -> str:
    import yaml

    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "u"}}]}))
    return str(path)


@pytest.fixture
def silent_server():
    """Accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


@pytest.mark.parametrize("argv", [["status", "j"], ["list"], ["logs", "j"]])
def test_a_server_that_never_answers_is_one_line_naming_it(tmp_path, capsys, monkeypatch, silent_server, argv):
    import time

    from launcher.k8s import api

    monkeypatch.setattr(api, "READ_TIMEOUT", 1.0)
    monkeypatch.setenv("KUBECONFIG", kubeconfig_for(tmp_path, silent_server))
    started = time.monotonic()
    code = main(argv)
    err = capsys.readouterr().err
    assert time.monotonic() - started < 15
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"127.0.0.1:{silent_server}" in err and "did not answer within 1s" in err, err


def test_a_submit_to_a_server_that_never_answers_is_one_line(tmp_path, capsys, monkeypatch, silent_server):
    from launcher.k8s import api
    from tests.helpers import EXAMPLE

    monkeypatch.setattr(api, "READ_TIMEOUT", 1.0)
    monkeypatch.setenv("KUBECONFIG", kubeconfig_for(tmp_path, silent_server))
    code = main([EXAMPLE, "--gpus", "8", "--checkpoint", "s3://b/c"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "did not answer" in err, err


def test_a_closed_port_is_one_short_line(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the with ends
    monkeypatch.setenv("KUBECONFIG", kubeconfig_for(tmp_path, port))
    code = main(["status", "j"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == (f"launch: error: reading PyTorchJob j: cannot connect to the API server "
                                 f"http://127.0.0.1:{port} (connection refused)"), err


def test_kubeconfig_pointing_at_a_missing_file_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "gone"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code = main(["list"])
    err = capsys.readouterr().err
    assert code == 1 and f"KUBECONFIG points at {tmp_path / 'gone'}, which does not exist" in err, err


@pytest.mark.parametrize("argv", [["x.py", "-h"], ["x.py", "--gpus", "8", "--he"], ["status", "-h"]])
def test_help_anywhere_returns_0_and_never_exits(capsys, argv):
    assert main(argv) == 0 and "usage:" in capsys.readouterr().out


def test_evictions_named_without_a_uid_count_after_the_job_and_never_past_its_pods():
    j = job(workers=0, created=at(100))
    pods = [pod("j-master-0", "b")]
    pod_events = [ev("j-master-0", "a", created=at(101)), ev("j-master-0", "b", created=at(130)),
                  ev("j-master-0", None, reason="TaintManagerEviction", message="Marking for deletion",
                     created=at(120), count=7),  # merged: 7 times the same text
                  ev("j-master-0", None, reason="TaintManagerEviction", created=at(50))]  # an earlier job's
    inc = ct.pod_incarnations(j, pods, pod_events)
    causes = ct.restart_causes(j, [], pod_events, inc)
    assert [(c["replica"], c["count"]) for c in causes] == [("master-0", 2)]


def test_pods_and_events_read_as_raw_json_become_the_plain_records():
    """`launch status` reads pods and events as the API's JSON (no typed models: 5.7 s at 512 pods)."""
    from launcher.k8s import jobs

    job = {"metadata": {"name": "held", "uid": "job-1", "creationTimestamp": "2026-01-01T00:00:00Z"}}
    pod = {"metadata": {"name": "held-worker-10", "uid": "p-10", "labels": {
               "training.kubeflow.org/replica-type": "worker", "training.kubeflow.org/replica-index": "10"},
               "ownerReferences": [{"uid": "job-1", "controller": True}]},
           "spec": {"nodeName": "n-3"},
           "status": {"phase": "Running", "containerStatuses": [
               {"name": "pytorch", "restartCount": 2, "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 143}}}]}}
    pending = {"metadata": {"name": "held-worker-2", "uid": "p-2", "labels": {
                   "training.kubeflow.org/replica-type": "Worker", "training.kubeflow.org/replica-index": "2"},
                   "deletionTimestamp": "2026-01-01T00:01:00Z"},
               "spec": {}, "status": {"phase": "Pending", "conditions": [
                   {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/5 nodes are available:\n  5 Insufficient nvidia.com/gpu."}]}}
    running, waiting = records.describe_pod(pod), records.describe_pod(pending)
    assert running["replica"] == "worker-10" and running["owner_uid"] == "job-1" and running["node"] == "n-3"
    assert running["exit_code"] == 143 and running["retryable"] and not running["deleting"]
    assert waiting["deleting"] and waiting["node"] is None and waiting["owner_uid"] is None
    assert waiting["unschedulable"] == "0/5 nodes are available: 5 Insufficient nvidia.com/gpu."
    assert records.pod_problem({**waiting, "deleting": False}).startswith("unschedulable: 0/5 nodes are available")
    assert sorted([pod, pending], key=lambda p: records.natural_key(jobs.replica_id(p)))[0] is pending

    event = records.event_record({"involvedObject": {"kind": "Pod", "name": "held-worker-10", "uid": "p-10"},
                                  "reason": "Scheduled", "message": "assigned", "type": "Normal",
                                  "metadata": {"creationTimestamp": "2026-01-01T00:00:05Z"}})
    assert event["count"] == 1 and event["created"] == datetime.datetime(2026, 1, 1, 0, 0, 5, tzinfo=datetime.timezone.utc)
    again = records.event_record({"involvedObject": {"kind": "Pod", "name": "held-worker-10", "uid": "p-9"},
                                  "reason": "Scheduled", "count": 3, "metadata": {"creationTimestamp": "2026-01-01T00:00:01Z"}})
    incarnations = ct.pod_incarnations(job, [running], [event, again])
    assert ct.count_restarts(incarnations) == {"held-worker-10": 1}
