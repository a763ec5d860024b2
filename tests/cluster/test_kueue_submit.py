"""`launch --queue` against a real Kueue v0.17.0 (the `kueue_cluster` fixture, tests/cluster/kueue.py).

Preflight refusals (no such LocalQueue, more GPUs than the ClusterQueue can ever admit, a kind
Kueue does not manage) leave nothing behind; a queued job is created suspended by Kueue's
webhook (launch never sets suspend), carries the labels, and is admitted. Each test makes
its own namespace and a LocalQueue there pointing at the fixture's ClusterQueue.
"""

from __future__ import annotations

import pytest

from launcher.kueue import names
from tests.cluster import kueue as fixture
from tests.cluster.test_launcher_against_apiserver import launch, namespace
from tests.cluster.test_operator_runs_our_jobs import wait
from tests.helpers import EXAMPLE
from trainer import contract

pytestmark = pytest.mark.cluster

KINDS = {"pytorchjob": ("kubeflow.org", "v1", "pytorchjobs"), "trainjob": ("trainer.kubeflow.org", "v1alpha1",
                                                                          "trainjobs")}
FRAMEWORK = {"pytorchjob": fixture.PYTORCHJOB_FRAMEWORK, "trainjob": fixture.TRAINJOB_FRAMEWORK}


@pytest.fixture
def api(kueue_cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", kueue_cluster)
    from launcher.k8s import api as client

    return client.connect()


@pytest.fixture
def ns(api, kueue):
    """A fresh namespace with the tier's LocalQueue; deleted after the test, with its jobs and their Workloads,
    so that no test holds the ClusterQueue's quota for the next."""
    name = namespace(api)
    kueue.local_queue(name)
    yield name
    fixture.gone_with_its_workloads(api, name)


def args(ns: str, name: str, *flags: str) -> list[str]:
    return [EXAMPLE, "--checkpoint", "s3://b/c", "--name", name, "-n", ns, *flags]


def jobs_in(api, ns: str) -> dict[str, list[str]]:
    out = {}
    for backend, (g, v, plural) in KINDS.items():
        out[backend] = [j["metadata"]["name"] for j in api.custom.list_namespaced_custom_object(g, v, ns, plural)["items"]]
    out["trainingruntimes"] = [j["metadata"]["name"] for j in api.custom.list_namespaced_custom_object(
        "trainer.kubeflow.org", "v1alpha1", ns, "trainingruntimes")["items"]]
    out["configmaps"] = [c.metadata.name for c in api.core.list_namespaced_config_map(
        ns, label_selector=contract.LABEL_JOB).items]
    return out


NOTHING = {"pytorchjob": [], "trainjob": [], "trainingruntimes": [], "configmaps": []}


def test_no_such_local_queue_is_refused_naming_the_ones_there(api, ns, capsys):
    code, out, err = launch(capsys, *args(ns, "lq", "--gpus", "1", "--queue", "nope"))
    assert code == 2, err
    assert f"no LocalQueue 'nope' in namespace {ns} (LocalQueues there: {fixture.LOCAL_QUEUE})" in err
    assert jobs_in(api, ns) == NOTHING


def test_more_gpus_than_the_cluster_queue_can_ever_admit_is_refused(api, ns, capsys):
    cap = fixture.GPU_NOMINAL + fixture.GPU_BORROWING_LIMIT  # in a cohort, with a borrowing limit
    code, out, err = launch(capsys, *args(ns, "big", "--gpus", str(cap + 1), "--gpus-per-node", "1",
                                          "--queue", fixture.LOCAL_QUEUE))
    assert code == 2 and f"the job asks for {cap + 1} nvidia.com/gpu in all" in err and f"{fixture.FLAVOR}: {cap}" in err, err
    assert jobs_in(api, ns) == NOTHING


def test_an_unknown_workload_priority_class_is_refused(api, ns, capsys):
    code, out, err = launch(capsys, *args(ns, "prio", "--gpus", "1", "--queue", fixture.LOCAL_QUEUE,
                                          "--priority", "no-such-priority"))
    assert code == 2 and "no Kueue WorkloadPriorityClass 'no-such-priority'" in err, err
    assert jobs_in(api, ns) == NOTHING


@pytest.mark.parametrize("backend,extra", [("pytorchjob", []), ("trainjob", []),
                                           ("trainjob", ["--max-restarts", "5"])])  # with a runtime of its own
def test_a_kind_kueue_does_not_manage_is_refused_and_nothing_is_left(api, ns, kueue, capsys, backend, extra):
    kueue.restart(frameworks=tuple(f for f in fixture.FRAMEWORKS if f != FRAMEWORK[backend]))
    try:
        code, out, err = launch(capsys, *args(ns, "unmanaged", "--gpus", "1", "--queue", fixture.LOCAL_QUEUE,
                                              "--backend", backend, *extra))
    finally:
        kueue.restart()
    assert code == 2, err
    kind = "PyTorchJob" if backend == "pytorchjob" else "TrainJob"
    assert f"Kueue does not manage {kind} " \
           f"on this cluster: enable the `{FRAMEWORK[backend]}` integration" in err
    assert jobs_in(api, ns) == NOTHING


@pytest.mark.parametrize("backend", list(KINDS))
def test_a_queued_job_is_suspended_by_kueue_labelled_and_admitted(api, ns, capsys, backend):
    code, out, err = launch(capsys, *args(ns, "queued", "--gpus", "1", "--queue", fixture.LOCAL_QUEUE,
                                          "--priority", "low", "--backend", backend))
    assert code == 0, err
    assert f"queued in LocalQueue {fixture.LOCAL_QUEUE}" in out
    g, v, plural = KINDS[backend]
    job = api.custom.get_namespaced_custom_object(g, v, ns, plural, "queued")
    labels = job["metadata"]["labels"]
    assert labels[names.QUEUE_LABEL] == fixture.LOCAL_QUEUE and labels[names.PRIORITY_LABEL] == "low"

    def admitted():
        w = fixture.workload_of(api.custom, ns, job["metadata"]["uid"])
        return w if (fixture.condition(w, "Admitted") or {}).get("status") == "True" else None

    w = wait(admitted, 60, "Kueue to admit the job's workload",
             explain=lambda: str(fixture.workload_of(api.custom, ns, job["metadata"]["uid"])))
    assert w["spec"]["queueName"] == fixture.LOCAL_QUEUE
    assert (w["spec"].get("priorityClassRef") or {}).get("name") == "low"

    def unsuspended():
        got = api.custom.get_namespaced_custom_object(g, v, ns, plural, "queued")
        where = got["spec"]["runPolicy"] if backend == "pytorchjob" else got["spec"]
        # launch never sets suspend: the field is there because Kueue's webhook set it on create,
        # and false because Kueue admitted the job.
        return where.get("suspend") is False

    wait(unsuspended, 60, "Kueue to unsuspend the admitted job")
