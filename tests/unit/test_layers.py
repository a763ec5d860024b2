"""Layers point down (docs/architecture.md): the I/O layers import no command package, one module opens the
object store, and the chaos tooling imports only the runtime."""

from __future__ import annotations

import os
import re

import pytest

from tests.helpers import REPO


def imports(folder: str) -> dict[str, set[str]]:
    """{file under REPO: the modules it imports (at any indentation)}."""
    out = {}
    for root, _, files in os.walk(os.path.join(REPO, folder)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path) as f:
                    text = f.read()
                out[os.path.relpath(path, REPO)] = set(re.findall(r"^\s*(?:from|import)\s+([\w.]+)", text, re.M))
    return out


@pytest.mark.parametrize("above", ["launcher.job", "launcher.schedule", "launcher.status", "launcher.chaos"])
def test_the_cluster_layer_imports_no_command_package(above):
    bad = {f: m for f, mods in imports("launcher/k8s").items() if (m := {x for x in mods if x.startswith(above)})}
    assert bad == {}


def test_only_the_object_store_module_opens_fsspec_or_boto3_in_the_launcher():
    bad = {f for f, mods in imports("launcher").items()
           if any(m.split(".")[0] in ("fsspec", "boto3", "botocore") for m in mods)}
    assert bad == {"launcher/objectstore.py"}


def test_the_chaos_tooling_imports_the_runtime_not_the_launcher():
    bad = {f for f, mods in imports("kubetrain_chaos").items() if any(m.startswith("launcher") for m in mods)}
    assert bad == set()
