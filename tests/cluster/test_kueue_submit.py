"""`launch --queue` against a real Kueue v0.17.0 (the `kueue_cluster` fixture, tests/cluster/kueue.py).

Preflight refusals (no such LocalQueue, more GPUs than the ClusterQueue can ever admit, a kind
Kueue does not manage) leave nothing behind; a queued job is created suspended by Kueue's
webhook (launch never sets suspend), carries the labels, and is admitted. Each test makes
its own namespace and a LocalQueue there pointing at the fixture's ClusterQueue.
"""

from __future__ import annotations

import pytest

from launcher.kueue import names as kueue
from tests.cluster import kueue as fixture
from tests.cluster.test_launcher_against_apiserver import launch, namespace
from tests.cluster.test_operator_runs_our_jobs import wait
from tests.helpers import EXAMPLE
from trainer import contract

pytestmark = pytest.mark.cluster

KINDS = {"pytorchjob": ("kubeflow.org", "v1", "pytorchjobs"), "trainjob": ("trainer.kubeflow.org", "v1alpha1",
                                                                          "trainjobs")}


@pytest.fixture
def api(kueue_cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", kueue_cluster)
    from launcher.k8s import api as client

    return client.connect()


@pytest.fixture
def ns(api):
    name = namespace(api)
    api.custom.create_namespaced_custom_object(kueue.GROUP, kueue.VERSION, name, kueue.LOCAL_QUEUE, kueue.local_queue(
        fixture.LOCAL_QUEUE, name, fixture.CLUSTER_QUEUE))
    return name


def args(ns: str, name: str, *flags: str) -> list[str]:
    return [EXAMPLE, "--checkpoint", "s3://b/c", "--name", name, "-n", ns, *flags]


def jobs_in(api, ns: str) -> dict[str, list[str]]:
    out = {}
    for backend, (g, v, plural) in KINDS.items():
        try:
            out[backend] = [j["metadata"]["name"] for j in api.custom.list_namespaced_custom_object(g, v, ns, plural)["items"]]
        except Exception:  # noqa: BLE001 - a kind the cluster does not serve has none
            out[backend] = []
    out["configmaps"] = [c.metadata.name for c in api.core.list_namespaced_config_map(
        ns, label_selector=f"{contract.LABEL_JOB}").items]
    return out


NOTHING = {"pytorchjob": [], "trainjob": [], "configmaps": []}


def gpu_cap(api) -> int:
    """The most nvidia.com/gpu the fixture's ClusterQueue can hold in one flavor (nominalQuota + borrowingLimit)."""
    from launcher.kueue.checks import quantity

    cq = api.custom.get_cluster_custom_object(kueue.GROUP, kueue.VERSION, kueue.CLUSTER_QUEUE, fixture.CLUSTER_QUEUE)
    caps = [quantity(r.get("nominalQuota", 0)) + quantity(r.get("borrowingLimit", 0))
            for g in cq["spec"]["resourceGroups"] for f in g["flavors"] for r in f["resources"]
            if r["name"] == "nvidia.com/gpu"]
    assert caps, f"ClusterQueue {fixture.CLUSTER_QUEUE} has no nvidia.com/gpu quota"
    return int(max(caps))


def test_no_such_local_queue_is_refused_naming_the_ones_there(api, ns, capsys):
    code, out, err = launch(capsys, *args(ns, "lq", "--gpus", "1", "--queue", "nope"))
    assert code == 2, err
    assert f"no LocalQueue 'nope' in namespace {ns} (LocalQueues there: {fixture.LOCAL_QUEUE})" in err
    assert jobs_in(api, ns) == NOTHING


def test_more_gpus_than_the_cluster_queue_can_ever_admit_is_refused(api, ns, capsys):
    too_many = gpu_cap(api) + 1
    code, out, err = launch(capsys, *args(ns, "big", "--gpus", str(too_many), "--gpus-per-node", "1",
                                          "--queue", fixture.LOCAL_QUEUE))
    assert code == 2 and f"the job asks for {too_many} nvidia.com/gpu in all" in err, err
    assert jobs_in(api, ns) == NOTHING


def test_an_unknown_workload_priority_class_is_refused(api, ns, capsys):
    code, out, err = launch(capsys, *args(ns, "prio", "--gpus", "1", "--queue", fixture.LOCAL_QUEUE,
                                          "--priority", "no-such-priority"))
    assert code == 2 and "no Kueue WorkloadPriorityClass 'no-such-priority'" in err, err
    assert jobs_in(api, ns) == NOTHING


def served(api, backend: str) -> bool:
    g, v, plural = KINDS[backend]
    from launcher.k8s.api import call

    return call("crd", lambda: api.ext.read_custom_resource_definition(f"{plural}.{g}"), missing_ok=True) is not None


def managed(api, ns: str, backend: str) -> bool:
    """Whether this Kueue manages the kind: a dry run of a queued job comes back suspended."""
    from launcher import backends
    from launcher.job.render import spec_to_objects
    from launcher.job.spec import JobSpec, Resources
    from launcher.k8s.api import create

    spec = JobSpec(script="train.py", namespace=ns, checkpoint_uri="s3://b/c", queue=fixture.LOCAL_QUEUE,
                   resources=Resources(gpus_per_node=1))
    job = spec_to_objects(spec, name="probe", code=None, image="img:1", backend=backends.BACKENDS[backend])[0]
    return backends.BACKENDS[backend].suspended(create(api, ns, job, dry_run=True))


@pytest.mark.parametrize("backend", list(KINDS))
def test_a_kind_kueue_does_not_manage_is_refused(api, ns, capsys, backend):
    if not served(api, backend):
        pytest.skip(f"the fixture's cluster does not serve {backend}")
    if managed(api, ns, backend):
        pytest.skip(f"the fixture's Kueue manages {backend} (it offers no Kueue without that integration)")
    code, out, err = launch(capsys, *args(ns, "unmanaged", "--gpus", "1", "--queue", fixture.LOCAL_QUEUE,
                                          "--backend", backend))
    assert code == 2 and "Kueue does not manage" in err and "integration" in err, err
    assert jobs_in(api, ns) == NOTHING


@pytest.mark.parametrize("backend", list(KINDS))
def test_a_queued_job_is_suspended_by_kueue_labelled_and_admitted(api, ns, capsys, backend):
    if not served(api, backend):
        pytest.skip(f"the fixture's cluster does not serve {backend}")
    if not managed(api, ns, backend):
        pytest.skip(f"the fixture's Kueue does not manage {backend}")
    code, out, err = launch(capsys, *args(ns, "queued", "--gpus", "1", "--queue", fixture.LOCAL_QUEUE,
                                          "--priority", "low", "--backend", backend))
    assert code == 0, err
    assert f"queued in LocalQueue {fixture.LOCAL_QUEUE}" in out
    g, v, plural = KINDS[backend]
    job = api.custom.get_namespaced_custom_object(g, v, ns, plural, "queued")
    labels = job["metadata"]["labels"]
    assert labels[kueue.QUEUE_LABEL] == fixture.LOCAL_QUEUE and labels[kueue.PRIORITY_LABEL] == "low"

    def workload():
        items = api.custom.list_namespaced_custom_object(kueue.GROUP, kueue.VERSION, ns, "workloads")["items"]
        return next((w for w in items if any(o.get("name") == "queued" for o in w["metadata"].get("ownerReferences")
                                             or [])), None)

    def admitted():
        w = workload()
        return w if w and any(c["type"] == "Admitted" and c["status"] == "True"
                              for c in (w.get("status") or {}).get("conditions") or []) else None

    w = wait(admitted, 60, "Kueue to admit the job's workload", explain=lambda: str(workload()))
    assert w["spec"]["queueName"] == fixture.LOCAL_QUEUE

    def unsuspended():
        got = api.custom.get_namespaced_custom_object(g, v, ns, plural, "queued")
        where = got["spec"]["runPolicy"] if backend == "pytorchjob" else got["spec"]
        # launch never sets suspend: the field is there because Kueue's webhook set it, and false
        # because Kueue admitted the job.
        return where.get("suspend") is False

    wait(unsuspended, 60, "Kueue to unsuspend the admitted job")
