"""Offline validation against the CRDs vendored in k8s/crds/, as strict as the API server's.

`validate(obj)` finds the CRD of obj's apiVersion and kind and checks obj against its
openAPIV3Schema with jsonschema. The API server also rejects fields the schema does not
name (strict field validation; `kubectl --validate=strict`, the Python client's
`field_validation="Strict"`), which plain jsonschema lets through: so every object schema
with `properties` gets `additionalProperties: false` unless it keeps unknown fields
(`x-kubernetes-preserve-unknown-fields`). Not checked offline: the CRDs' CEL rules
(`x-kubernetes-validations`) and the controllers' own admission webhooks; the cluster tier
meets both.
"""

from __future__ import annotations

import functools
import glob
import os
from typing import Any

import jsonschema
import yaml

from tests.helpers import REPO

CRD_DIR = os.path.join(REPO, "k8s", "crds")


@functools.cache
def crds() -> dict[tuple[str, str], dict]:
    """(group, kind) → the vendored CRD."""
    out = {}
    for path in sorted(glob.glob(os.path.join(CRD_DIR, "*.yaml"))):
        for doc in yaml.safe_load_all(open(path)):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                out[(doc["spec"]["group"], doc["spec"]["names"]["kind"])] = doc
    return out


def _strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def _schema(group: str, version: str, kind: str) -> dict:
    crd = crds()[(group, kind)]
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    return _strict(served["schema"]["openAPIV3Schema"])


def schema(api_version: str, kind: str) -> dict:
    """The strict openAPIV3Schema of apiVersion/kind (KeyError when no vendored CRD serves it)."""
    group, version = api_version.split("/", 1)
    return _schema(group, version, kind)


def validate(obj: dict) -> None:
    """Raise jsonschema.ValidationError when obj would not pass its CRD's schema."""
    jsonschema.validate(obj, schema(obj["apiVersion"], obj["kind"]))
