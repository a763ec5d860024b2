"""`launch chaos JOB` against the operator cluster: pod kill, spot-style eviction and a drain, each
recreated by the real operator and reported, with the resume step read from the pod's log."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import LOGS_NAMESPACE
from tests.cluster.test_launcher_against_apiserver import launch
from tests.cluster.test_operator_faults import cri_line
from tests.cluster.test_operator_runs_our_jobs import api, held, running_pod, wait  # noqa: F401 (api: fixture)
from trainer import contract

pytestmark = pytest.mark.cluster


def _namespace(api, name: str) -> str:
    from kubernetes.client.exceptions import ApiException

    try:
        api.core.create_namespace({"metadata": {"name": name}})
    except ApiException as e:
        if e.status != 409:
            raise
    return name


def test_kill_pod_twice_the_operator_recreates_it_and_chaos_reads_the_new_pods_log(api, capsys, kwok_pod_log):
    # kwok runs no container: it serves every pod's log from kwok_pod_log, written here as the runtime would
    # print its resume line. So "resumed from step 1200" checks that chaos found the recreated pod, read its
    # log through the API server and parsed contract.LOG_RESUMED in it, not that anything trained or resumed
    # (tests/runtime/test_chaos_local.py and the node tier check that).
    kwok_pod_log.write_text(cri_line(contract.LOG_RESUMED.format(step=1200)))
    with held(api, capsys, ns=_namespace(api, LOGS_NAMESPACE)) as (ns, selector):
        first = wait(lambda: running_pod(api, ns, selector), 90, "the master pod")
        code, out, err = launch(capsys, "chaos", "held", "-n", ns, "--kill-pod", "master", "--count", "2",
                                "--every", "2s", "--wait", "90s", "--seed", "1")
        assert code == 0, out + err
        assert "fault 1/2: deleted master-0 (held-master-0)" in out and "fault 2/2: deleted master-0" in out, out
        assert out.count("resumed from step 1200") == 2, out  # the canned line, read once per recreated pod
        assert "pods recreated 2 time(s) during chaos" in out, out
        now = running_pod(api, ns, selector)
        assert now is not None and now.metadata.uid != first.metadata.uid


def test_an_eviction_with_grace_is_recreated(api, capsys):
    with held(api, capsys) as (ns, selector):
        wait(lambda: running_pod(api, ns, selector), 90, "the master pod")

        def evicted() -> str:
            # The PDB's disruptionsAllowed is computed by the disruption controller shortly after the pod runs.
            code, out, err = launch(capsys, "chaos", "held", "-n", ns, "--evict-with-grace", "5", "--wait", "90s")
            return out if code == 0 else ""

        out = wait(evicted, 60, "an eviction the PodDisruptionBudget allows")
        assert "evicted master-0 (held-master-0)" in out and "grace 5s" in out and "running after" in out, out


def test_drain_moves_the_pod_to_another_node_and_uncordons(api, capsys):
    with held(api, capsys) as (ns, selector):
        before = wait(lambda: running_pod(api, ns, selector), 90, "the master pod")
        node = before.spec.node_name

        def drained() -> str:
            code, out, err = launch(capsys, "chaos", "held", "-n", ns, "--drain-node", "--wait", "90s")
            return out if code == 0 else ""

        out = wait(drained, 60, "a drain the PodDisruptionBudget allows")
        assert f"drained node {node}: cordoned, evicted master-0" in out and f"uncordoned node {node}" in out, out
        after = running_pod(api, ns, selector)
        assert after.spec.node_name != node
        assert not api.core.read_node(node).spec.unschedulable


def test_a_job_that_does_not_exist_is_one_line(api, capsys):
    code, out, err = launch(capsys, "chaos", "nope", "-n", "default", "--kill-pod", "random")
    assert code == 2 and "no PyTorchJob or TrainJob 'nope'" in err and err.count("\n") == 1
