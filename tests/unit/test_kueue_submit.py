"""`launch --queue`: Kueue's labels, its refusals (one line, exit 2, nothing created), the schedule's runs."""

from __future__ import annotations

import json

import pytest
import yaml

from launcher.cli import main
from launcher.kueue import checks
from launcher.kueue import names as kueue
from tests.helpers import EXAMPLE
from tests.unit.fake_kueue_api import FakeCluster, cluster_queue, local_queue

BASE = [EXAMPLE, "--checkpoint", "s3://b/c", "--name", "job-a", "-n", "team-a"]


def dry_run(capsys, *flags):
    code = main([*BASE, *flags, "--dry-run", "-o", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


# --- flags and rendering -------------------------------------------------------------------


@pytest.mark.parametrize("backend,suspend_path", [("pytorchjob", ("spec", "runPolicy")), ("trainjob", ("spec",))])
def test_the_labels_go_on_the_job_object_only_and_suspend_is_left_to_kueue(capsys, backend, suspend_path):
    objects = dry_run(capsys, "--gpus", "8", "--queue", "team-a", "--priority", "high", "--backend", backend,
                      "--max-restarts", "5")  # a TrainJob with a runtime of its own: that one gets no label
    job, others = objects[0], objects[1:]
    assert job["metadata"]["labels"][kueue.QUEUE_LABEL] == "team-a"
    assert job["metadata"]["labels"][kueue.PRIORITY_LABEL] == "high"
    assert not any(kueue.QUEUE_LABEL in o["metadata"]["labels"] for o in others)
    assert len(others) >= 1
    where = job
    for key in suspend_path:
        where = where[key]
    assert "suspend" not in where


def test_without_queue_nothing_of_kueue_is_rendered(capsys):
    text = json.dumps(dry_run(capsys, "--gpus", "8"))
    assert kueue.GROUP not in text


def test_config_keys_queue_and_priority(tmp_path, capsys, monkeypatch):
    (tmp_path / "launch.yaml").write_text("queue: team-a\npriority: low\n")
    monkeypatch.chdir(tmp_path)
    labels = dry_run(capsys, "--gpus", "8")[0]["metadata"]["labels"]
    assert labels[kueue.QUEUE_LABEL] == "team-a" and labels[kueue.PRIORITY_LABEL] == "low"


@pytest.mark.parametrize("flags,needle", [
    (["--queue", "team-a", "--gang", "volcano"], "--queue with --gang volcano: Kueue admits all"),
    (["--priority", "high"], "--priority high is a Kueue WorkloadPriorityClass and needs --queue"),
    (["--queue", "Team_A"], "--queue 'Team_A' must be lower-case"),
    (["--queue", "q" * 64], "at most 63 characters"),
    (["--queue", "team-a", "--priority", "High!"], "--priority 'High!'"),
])
def test_bad_queue_flags_are_one_line_and_exit_2(capsys, flags, needle):
    code = main([*BASE, "--gpus", "8", *flags, "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_queue_has_no_meaning_with_local(capsys):
    assert main([EXAMPLE, "--local", "--queue", "team-a"]) == 2
    assert "--queue has no meaning with --local" in capsys.readouterr().err


def test_help_tells_the_two_priorities_apart(capsys):
    main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--priority-class PRIORITY_CLASS a Kubernetes PriorityClass" in out
    assert "--priority NAME with --queue: a Kueue WorkloadPriorityClass" in out
    assert kueue.QUEUE_LABEL in out and kueue.PRIORITY_LABEL in out


# --- the pure checks -----------------------------------------------------------------------


def test_missing_api():
    assert checks.missing_api({"localqueues.kueue.x-k8s.io": ["v1beta2"]}) is None
    assert "the cluster has no Kueue (no localqueues.kueue.x-k8s.io CRD): install Kueue, or drop --queue" == \
        checks.missing_api({"localqueues.kueue.x-k8s.io": None})
    assert "not v1beta2" in checks.missing_api({"localqueues.kueue.x-k8s.io": ["v1beta1"]})


def test_no_local_queue_names_those_there_are():
    assert checks.no_local_queue("tema-a", "ns", ["team-b", "team-a"]) == (
        "--queue tema-a: no LocalQueue 'tema-a' in namespace ns (LocalQueues there: team-a, team-b)")
    assert "it has none" in checks.no_local_queue("x", "ns", [])


def quota(cq, podsets, gpu_type=None, labels=None, resource="nvidia.com/gpu"):
    return checks.quota_problem(cq, queue="team-a", resource=resource, podsets=podsets, gpu_type=gpu_type,
                                flavor_labels=labels or {})


def test_a_job_that_fits_a_flavor_passes_and_one_that_never_can_is_refused():
    assert quota(cluster_queue(gpus="16"), [8, 8]) is None
    line = quota(cluster_queue(gpus="16"), [8, 16])
    assert line.startswith("the job asks for 24 nvidia.com/gpu in all and ClusterQueue gpu-team-a (of LocalQueue "
                           "team-a) can never admit that") and "fake-gpu: 16" in line and "--gpus" in line
    assert quota(cluster_queue(gpus="16"), [0]) is None  # a CPU job asks nothing of it


def test_borrowing_counts_and_a_cohort_without_a_limit_says_nothing():
    assert quota(cluster_queue(gpus="8", cohort="org", borrowing="8"), [16]) is None
    assert "fake-gpu: 16" in quota(cluster_queue(gpus="8", cohort="org", borrowing="8"), [24])
    assert quota(cluster_queue(gpus="8", cohort="org"), [1000]) is None


def test_pod_sets_may_take_different_flavors_but_each_one_whole():
    cq = cluster_queue(gpus="8", extra_flavors=[("other-gpu", "8")])
    assert quota(cq, [8, 8]) is None  # Master on one flavor, Workers on the other
    assert quota(cq, [16]) is not None  # one pod set: one flavor


def test_a_resource_the_cluster_queue_does_not_cover_is_refused():
    line = quota(cluster_queue(), [8], resource="nvidia.com/mig-1g.10gb")
    assert "has no quota for nvidia.com/mig-1g.10gb (it covers cpu, nvidia.com/gpu)" in line


def test_gpu_type_counts_only_flavors_of_that_model():
    cq = cluster_queue(gpus="8", extra_flavors=[("h100", "64")])
    labels = {"fake-gpu": {kueue_product(): "NVIDIA-A100"}, "h100": {kueue_product(): "NVIDIA-H100"}}
    assert quota(cq, [32], gpu_type="NVIDIA-H100", labels=labels) is None
    assert quota(cq, [32], gpu_type="NVIDIA-A100", labels=labels) is not None
    line = quota(cq, [8], gpu_type="NVIDIA-L4", labels=labels)
    assert line.startswith("--gpu-type NVIDIA-L4: no flavor of ClusterQueue gpu-team-a") and "h100 (NVIDIA-H100)" in line
    assert quota(cq, [32], gpu_type="NVIDIA-L4", labels={}) is None  # flavors without the label (or unread) count


def kueue_product():
    from launcher.job.render import GPU_PRODUCT_LABEL

    return GPU_PRODUCT_LABEL


def test_unmanaged_names_the_integration():
    line = checks.unmanaged("PyTorchJob", "kubeflow.org/pytorchjob", {"trainjob": "trainer.kubeflow.org/trainjob"})
    assert line.startswith("Kueue does not manage PyTorchJob on this cluster: enable the `kubeflow.org/pytorchjob` "
                           "integration (integrations.frameworks in Kueue's Configuration) or use --backend trainjob")


# --- submitting against a fake cluster: refusals create nothing ------------------------------


@pytest.fixture
def cluster(monkeypatch):
    from launcher.job import bucket_lifecycle
    from launcher.k8s import api

    holder = {}

    def use(**kw):
        holder["c"] = FakeCluster(**kw)
        return holder["c"]

    monkeypatch.setattr(api, "connect", lambda context=None: holder["c"].api())
    monkeypatch.setattr(bucket_lifecycle, "warn_without_abort_rule", lambda uri: None)
    return use


GOOD = dict(local_queues={"team-a": local_queue()}, cluster_queues={"gpu-team-a": cluster_queue(gpus="16")},
            priority_classes=["low", "high"])


def submit(capsys, *flags):
    code = main([*BASE, *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_a_queued_job_is_dry_run_then_created(cluster, capsys, backend):
    c = cluster(**GOOD)
    code, out, err = submit(capsys, "--gpus", "16", "--gpus-per-node", "8", "--queue", "team-a", "--priority", "high",
                            "--backend", backend)
    assert code == 0, err
    assert len(c.dry_runs) == 1 and c.created[0][1] == "job-a"
    assert "queued in LocalQueue team-a" in out


@pytest.mark.parametrize("kw,flags,needle,exit_code", [
    (dict(kueue_versions=None), [], "the cluster has no Kueue (no localqueues.kueue.x-k8s.io CRD)", 2),
    (dict(GOOD, local_queues={"team-b": local_queue()}), [], "no LocalQueue 'team-a' in namespace team-a "
     "(LocalQueues there: team-b)", 2),
    (GOOD, ["--gpus", "24", "--gpus-per-node", "8"], "the job asks for 24 nvidia.com/gpu in all", 2),
    (dict(GOOD, cluster_queues={}), [], "its ClusterQueue 'gpu-team-a' does not exist", 2),
    (GOOD, ["--priority", "urgent"], "no Kueue WorkloadPriorityClass 'urgent' (there are: high, low)", 2),
    (dict(GOOD, managed=("TrainJob",)), [], "Kueue does not manage PyTorchJob on this cluster: enable the "
     "`kubeflow.org/pytorchjob` integration", 2),
    (dict(GOOD, managed=("PyTorchJob",)), ["--backend", "trainjob"], "Kueue does not manage TrainJob on this "
     "cluster: enable the `trainer.kubeflow.org/trainjob` integration", 2),
    (dict(GOOD, managed=("PyTorchJob",)), ["--backend", "trainjob", "--max-restarts", "5"],
     "Kueue does not manage TrainJob", 2),  # its own runtime was created for the dry run, and is removed again
    (dict(GOOD, webhook_denies="spec.x: Invalid value"), [], "denied the request: spec.x: Invalid value", 1),
])
def test_refusals_are_one_line_and_leave_nothing(cluster, capsys, kw, flags, needle, exit_code):
    c = cluster(**kw)
    code, out, err = submit(capsys, "--gpus", "8", "--queue", "team-a", *flags)
    assert code == exit_code and needle in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert c.created == []


def test_reads_the_user_may_not_make_are_one_warning_each_and_the_job_goes_on(cluster, capsys):
    c = cluster(**dict(GOOD, forbidden=("clusterqueues", "workloadpriorityclasses")))
    code, out, err = submit(capsys, "--gpus", "64", "--gpus-per-node", "8", "--queue", "team-a", "--priority", "x")
    assert code == 0, err
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("launch: warning: may not read ") for w in warnings)
    assert "ClusterQueue gpu-team-a" in warnings[0] and c.created


# --- schedules ---------------------------------------------------------------------------------


def test_a_schedules_stored_spec_keeps_the_queue_and_omits_it_when_unset(capsys):
    from launcher.schedule.render import run_to_objects
    from launcher.schedule.spec import stored_from_dict

    def stored(*flags):
        assert main(["schedule", *BASE, "--cron", "@daily", "--gpus", "8", *flags, "--dry-run", "-o", "yaml"]) == 0
        cm = [o for o in yaml.safe_load_all(capsys.readouterr().out) if o["kind"] == "ConfigMap"][0]
        return json.loads(cm["data"]["schedule.json"])

    plain = stored()
    assert "queue" not in plain["job"] and "workload_priority" not in plain["job"]  # older submitters read it
    doc = stored("--queue", "team-a", "--priority", "low")
    assert doc["job"]["queue"] == "team-a"
    run = run_to_objects(stored_from_dict(doc, code_data=b"x"), run_name="job-a-29403360", namespace="team-a")
    assert run[0]["metadata"]["labels"][kueue.QUEUE_LABEL] == "team-a"
    assert run[0]["metadata"]["labels"][kueue.PRIORITY_LABEL] == "low"


def test_launch_schedule_queue_is_checked_and_probed_before_it_is_created(cluster, capsys):
    c = cluster(**dict(GOOD, managed=()))
    code = main(["schedule", *BASE, "--cron", "@daily", "--gpus", "8", "--queue", "team-a"])
    err = capsys.readouterr().err
    assert code == 2 and "Kueue does not manage PyTorchJob" in err and c.created == []


# --- the submitter: time in the queue is waiting, not run time ---------------------------------


def queued_job(suspended: bool, *, started=None, deadline=60):
    j = {"kind": "PyTorchJob", "metadata": {"name": "run", "creationTimestamp": "2026-12-02T10:00:00Z",
                                            "labels": {kueue.QUEUE_LABEL: "team-a"}},
         "spec": {"runPolicy": {"activeDeadlineSeconds": deadline, "suspend": suspended}},
         "status": {"conditions": [{"type": "Created", "status": "True"}]}}
    if suspended:
        j["status"]["conditions"].append({"type": "Suspended", "status": "True",
                                          "lastTransitionTime": "2026-12-02T10:00:01Z"})
    if started:
        j["status"]["startTime"] = started
    return j


def test_a_suspended_job_is_never_past_its_deadline_and_an_admitted_one_counts_from_admission():
    from launcher.schedule import submitter

    t0 = submitter.queued_since(queued_job(True))
    assert t0 is not None and submitter.queued_since(queued_job(False)) is None
    # Re-suspended after running (a Kueue preemption): its old startTime does not count while it waits.
    assert not submitter.past_deadline(queued_job(True, started="2026-12-02T10:00:00Z"), t0 + 10**6)
    admitted = queued_job(False, started="2026-12-02T11:00:00Z")  # the operator's startTime: the resume
    assert not submitter.past_deadline(admitted, t0 + 3600 + 30)
    assert submitter.past_deadline(admitted, t0 + 3600 + 61)


def test_the_submitter_logs_the_wait_in_the_queue(monkeypatch, caplog):
    import logging

    from launcher.k8s import jobs
    from launcher.schedule import submitter

    t0 = submitter.queued_since(queued_job(True))
    seen = iter([queued_job(True), queued_job(True), {**queued_job(False, started="2026-12-02T10:10:00Z"),
                                                     "status": {"conditions": [{"type": "Succeeded",
                                                                                "status": "True"}]}}])
    touched = []
    monkeypatch.setattr(jobs, "get_job", lambda api, ns, name, required=True: next(seen))
    monkeypatch.setattr(jobs, "touch_job", lambda *a, **kw: touched.append(a))
    clock = iter([t0 + 120, t0 + 130, t0 + 700]).__next__
    with caplog.at_level(logging.INFO, logger="kubetrain.submit"):
        assert submitter.wait_for(None, "ns", "run", poll_seconds=1, sleep=lambda s: None, clock=clock) == 0
    lines = [r.getMessage() for r in caplog.records if "waiting in queue" in r.getMessage()]
    assert lines == ["waiting in queue team-a for 120 s, not counted against --max-runtime (Kueue has not "
                     "admitted PyTorchJob ns/run yet)"]  # once per QUEUE_LOG_EVERY_SECONDS
    assert touched == []


# --- the Helm chart's LocalQueue -----------------------------------------------------------------


def test_the_charts_local_queue_values():
    import os

    import jsonschema

    from tests.helpers import REPO

    chart = os.path.join(REPO, "k8s", "chart")
    schema = json.load(open(os.path.join(chart, "values.schema.json")))
    values = yaml.safe_load(open(os.path.join(chart, "values.yaml")))
    assert values["kueue"]["localQueue"]["enabled"] is False  # off by default: it needs Kueue
    on = {**values, "kueue": {"localQueue": {"enabled": True, "name": "team-a", "clusterQueue": "gpu-team-a"}}}
    jsonschema.validate(on, schema)
    for bad in ({"enabled": True, "name": "", "clusterQueue": "gpu-team-a"}, {"enabled": True, "name": "team-a"},
                {"enabled": True, "name": "Team_A", "clusterQueue": "q"}, {"enabled": "yes"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**values, "kueue": {"localQueue": bad}}, schema)
    template = open(os.path.join(chart, "templates", "localqueue.yaml")).read()
    assert "{{- if .Values.kueue.localQueue.enabled }}" in template and f"apiVersion: {kueue.API_VERSION}" in template
    assert "namespace: {{ .Release.Namespace }}" in template


@pytest.mark.parametrize("text,value", [("8", 8), ("500m", 0.5), ("1k", 1000), ("2Ki", 2048), (16, 16), ("1e3", 1000)])
def test_quantities(text, value):
    assert checks.quantity(text) == value
