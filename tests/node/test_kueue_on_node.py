"""Behind Kueue on the real node: a TrainJob queued with `launch --queue`, preempted by a higher-priority
workload, re-admitted, and resumed in real containers to the weights of an uninterrupted local run."""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import time

import pytest

from tests.cluster import kueue as kueue_tier
from tests.cluster.test_kueue_preemption import timings
from tests.cluster.test_launcher_against_apiserver import launch
from tests.cluster.test_operator_runs_our_jobs import wait
from tests.node.test_jobs_in_real_containers import (CLAIM, explain, final_digest, launch_job,  # noqa: F401
                                                     local_digest, local_volume)  # local_digest: a fixture
from trainer import contract

pytestmark = [pytest.mark.node, pytest.mark.timeout(1200)]


def test_a_kueue_preemption_of_a_trainjob_commits_exits_143_and_it_resumes_bit_identical(
        api, node, node_kueue, capsys, restricted_namespace, local_digest):
    from launcher.backends import trainjob as v2

    ns, name = restricted_namespace, "queued"
    node_kueue.local_queue(ns)
    folder = local_volume(api, node, ns)
    t0 = time.monotonic()
    launch_job(capsys, node, ns, name, "--steps", "60", "--step-sleep", "0.3", nproc=1, launch_args=(
        "--backend", "trainjob", "--pvc", f"{CLAIM}:/checkpoints", "--checkpoint", "/checkpoints",
        "--cpu", "500m", "--queue", kueue_tier.LOCAL_QUEUE, "--priority", "low"))
    uid = api.custom.get_namespaced_custom_object(v2.GROUP, v2.VERSION, ns, v2.PLURAL, name)["metadata"]["uid"]

    def state(kind: str):
        c = kueue_tier.condition(kueue_tier.workload_of(api.custom, ns, uid), kind)
        return c if c and c["status"] == "True" else None

    wait(lambda: state("Admitted"), 120, "Kueue to admit the TrainJob", explain(api, node, ns))
    t_admitted = time.monotonic() - t0
    latest = os.path.join(folder, name, contract.LATEST_NAME)
    wait(lambda: os.path.exists(latest), 300, "a committed checkpoint", explain(api, node, ns))

    # `launch chaos --kueue-preempt`: a higher-priority Workload takes the ClusterQueue's CPUs, Kueue evicts
    # the TrainJob (suspends it; the Jobs' pods go), chaos removes the preemptor and follows the job back.
    code, out, err = launch(capsys, "chaos", name, "-n", ns, "--kueue-preempt", "--wait", "400s")
    assert code == 0, out + err + explain(api, node, ns)()
    assert "evicted after" in out and "re-admitted after" in out and "resumed from step" in out, out

    # The pods went with the suspended JobSet (and with them their statuses): the kubelet's SIGTERM reached
    # both nodes' ranks, which agreed on a stop step, committed it and exited 143, as each node's first
    # attempt records in the run's restart ledger on the volume.
    objects = {os.path.basename(p): open(p, "rb").read()
               for p in glob.glob(os.path.join(folder, name, contract.ATTEMPTS_DIR, "*.json"))}
    attempts = contract.parse_ledger(objects)
    firsts = {n: contract.node_series(attempts, n)[0] for n in (0, 1)}
    assert {n: a.code for n, a in firsts.items()} == {0: contract.ExitCode.PREEMPTED, 1: contract.ExitCode.PREEMPTED}
    stop_step = firsts[0].committed
    assert stop_step and int(re.search(r"resumed from step (\d+)", out).group(1)) == stop_step, (stop_step, out)

    def finished() -> str | None:
        job = api.custom.get_namespaced_custom_object(v2.GROUP, v2.VERSION, ns, v2.PLURAL, name)
        return next((c["type"] for c in (job.get("status") or {}).get("conditions") or []
                     if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None)

    assert wait(finished, 420, "the TrainJob to finish", explain(api, node, ns)) == "Complete"
    pods = [p for p in _pods(api, ns, name) if p.status.phase == "Succeeded"]
    rank0 = next(p for p in pods if p.metadata.labels[v2.COMPLETION_INDEX_LABEL] == "0")
    log = api.core.read_namespaced_pod_log(rank0.metadata.name, ns, container=v2.CONTAINER)
    assert final_digest(log) == local_digest(60, ranks=2), log[-4000:]
    assert contract.parse_runtime_log(log.splitlines())["resumed_from"] == stop_step, (stop_step, log[-3000:])
    doc = json.loads(launch(capsys, "status", name, "-n", ns, "-o", "json")[1])
    # The JobSet did not restart and no retry was spent: Kueue's suspension is not a failure.
    assert (doc["state"], doc["restarts"], doc["retries_left"]) == ("Succeeded", 0, 3), doc
    (e,) = doc["admission"]["evictions"]  # read from the Workload: the ledger is on the volume, out of launch's reach
    assert (e["reason"], e["preemption"]) == ("Preempted", "InClusterQueue"), doc["admission"]
    t = timings(out)
    # Past capsys (launch's output is captured there): the figures BENCHMARKS.md quotes, seen with -s.
    print(f"kueue (node tier, load {open('/proc/loadavg').read().split()[0]}): submit -> admitted {t_admitted:.1f}s; "
          f"preemptor created -> TrainJob evicted {t['evicted']:.1f}s -> re-admitted {t['readmitted']:.1f}s "
          f"-> new pods running {t['running']:.1f}s", file=sys.__stderr__)


def _pods(api, ns: str, name: str):
    from launcher.backends import trainjob as v2

    return api.core.list_namespaced_pod(ns, label_selector=f"{v2.POD_JOB_LABEL}={name}").items
