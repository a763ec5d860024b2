"""The Docker-only path (scripts/kind-e2e, k8s/kind/) cannot run here; check what can be checked without Docker."""

from __future__ import annotations

import os
import subprocess

import yaml

from tests.helpers import REPO

SCRIPT = os.path.join(REPO, "scripts", "kind-e2e")


def test_the_kind_e2e_script_parses():
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    assert os.access(SCRIPT, os.X_OK)


def test_the_kind_config_is_a_one_node_cluster_on_loopback():
    config = yaml.safe_load(open(os.path.join(REPO, "k8s", "kind", "config.yaml")))
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    assert config["networking"]["apiServerAddress"] == "127.0.0.1"
    # One node: the job's pods share its ReadWriteOnce checkpoint volume.
    assert [n["role"] for n in config["nodes"]] == ["control-plane"]
    assert f"CLUSTER={config['name']}" in open(SCRIPT).read()  # the name `kind load` and `kind delete` use
