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


def test_the_local_kind_config_matches_the_node_image():
    """k8s/kind/config-local.yaml: kind's CNI off (images/kind-node bakes a bridge in), CoreDNS's tag ours."""
    config = yaml.safe_load(open(os.path.join(REPO, "k8s", "kind", "config-local.yaml")))
    assert config["name"] == yaml.safe_load(open(os.path.join(REPO, "k8s", "kind", "config.yaml")))["name"]
    assert config["networking"] == {"apiServerAddress": "127.0.0.1", "disableDefaultCNI": True}
    assert [n["role"] for n in config["nodes"]] == ["control-plane"]
    versions = dict(line.split("=", 1) for line in open(os.path.join(REPO, "cluster", "versions.env"))
                    if "=" in line and not line.startswith("#"))
    (patch,) = [yaml.safe_load(p) for p in config["kubeadmConfigPatches"]]
    assert patch == {"kind": "ClusterConfiguration", "dns": {"imageTag": versions["COREDNS_VERSION"].strip()}}


def test_the_kind_node_scripts_parse():
    for name in ("kind-node", "kind-dockerd"):
        path = os.path.join(REPO, "images", name)
        subprocess.run(["bash", "-n", path], check=True)
        assert os.access(path, os.X_OK)
    runc = os.path.join(REPO, "images", "kind-runc")
    subprocess.run(["sh", "-n", runc], check=True)
    assert os.access(runc, os.X_OK)


def test_the_kind_tier_runs_whole_on_the_node_tiers_worker():
    from tests.conftest import xdist_group_of

    # One after the other: each holds the runtime image unpacked in its own containerd.
    assert xdist_group_of("tests/kind/test_kind_cluster.py::test_x") == "node"
    assert xdist_group_of("tests/kind/conftest.py::y") == xdist_group_of("tests/node/test_image.py::z") == "node"


def test_kind_runc_drops_only_what_the_bounding_set_lacks(tmp_path):
    """images/kind-runc edits the bundle's spec (create) and the process file (exec), then calls runc."""
    import json
    import shutil

    import pytest

    if shutil.which("jq") is None:
        pytest.skip("needs jq (apt-get install jq)")
    bnd = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("CapBnd:")), 16)
    caps = ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN"]
    bits = {"CAP_CHOWN": 0, "CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24}
    kept = [c for c in caps if bnd >> bits[c] & 1]
    (tmp_path / "config.json").write_text(json.dumps({"process": {"capabilities": {"bounding": caps, "effective": caps}}}))
    (tmp_path / "process.json").write_text(json.dumps({"capabilities": {"permitted": caps}}))
    runc = os.path.join(REPO, "images", "kind-runc")
    env = {**os.environ, "KUBETRAIN_RUNC": "true"}
    subprocess.run([runc, "--root", "/x", "create", "--bundle", str(tmp_path), "id"], check=True, env=env)
    subprocess.run([runc, "exec", "--process", str(tmp_path / "process.json"), "id"], check=True, env=env)
    spec = json.loads((tmp_path / "config.json").read_text())["process"]["capabilities"]
    assert spec == {"bounding": kept, "effective": kept}
    assert json.loads((tmp_path / "process.json").read_text())["capabilities"] == {"permitted": kept}
