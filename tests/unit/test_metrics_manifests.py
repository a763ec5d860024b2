"""`launch --metrics-port`: the pod's container port and the runtime's variable, validated offline; and the
chart's PodMonitor, validated against the vendored Prometheus Operator CRD (tests/crds.py)."""

from __future__ import annotations

import kubernetes_validate
import pytest

from launcher.job.podmonitor import pod_monitor
from tests import crds
from tests.unit.test_launcher_manifests import BASE, K8S_VERSION, by_kind, crd_schema, dry_run, pod_spec
from trainer import contract


def test_a_metrics_port_is_a_named_container_port_and_the_runtimes_setting(capsys):
    objects = dry_run(BASE + ["--metrics-port", "9400"], capsys)
    spec = pod_spec(objects)
    c = spec["containers"][0]
    assert c["ports"] == [{"name": contract.METRICS_PORT_NAME, "containerPort": 9400}]
    assert {e["name"]: e["value"] for e in c["env"]}[contract.ENV_METRICS_PORT] == "9400"
    import jsonschema

    jsonschema.validate(by_kind(objects)["PyTorchJob"], crd_schema())
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec},
                                 K8S_VERSION, strict=True)


def test_without_the_flag_no_port_and_no_variable(capsys):
    c = pod_spec(dry_run(BASE, capsys))["containers"][0]
    assert "ports" not in c and contract.ENV_METRICS_PORT not in {e["name"] for e in c["env"]}


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_port_out_of_range_is_refused(port, capsys):
    from launcher.cli import main
    from tests.helpers import EXAMPLE

    assert main([EXAMPLE, *BASE, "--metrics-port", port, "--dry-run"]) != 0
    assert "--metrics-port must be" in capsys.readouterr().err


def test_the_pod_monitor_validates_against_the_vendored_crd_and_selects_launchs_pods():
    pm = pod_monitor("team-a", "15s")
    crds.validate(pm)
    assert pm["spec"]["selector"]["matchLabels"] == {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == contract.METRICS_PORT_NAME
