"""launcher/k8s/protobuf.py: pod metadata lists in the API server's protobuf, read as their JSON twins say.

tests/fixtures/pods/ holds answers of a real kube-apiserver (v1.34, the cluster tier's):
`metadata-page-{1,2}.pb` and `metadata.json` are the same three pods' PartialObjectMetadataList in
protobuf (two a page) and in JSON, j-worker-2 terminating (a finalizer held it); `running-metadata.pb`
the first page (limit 3) of a 512-pod job's.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from launcher.k8s import protobuf
from tests.helpers import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures", "pods")


def fixture(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def test_a_protobuf_metadata_list_reads_as_its_json_twin():
    items1, token1 = protobuf.metadata_list(fixture("metadata-page-1.pb"))
    items2, token2 = protobuf.metadata_list(fixture("metadata-page-2.pb"))
    assert token1 and token2 is None
    want = [i["metadata"] for i in json.loads(fixture("metadata.json"))["items"]]
    keys = ("name", "namespace", "uid", "deletionTimestamp", "labels")
    owner_keys = ("kind", "name", "uid", "apiVersion", "controller")
    assert items1 + items2 == [{**{k: m[k] for k in keys if k in m},
                                "ownerReferences": [{k: o[k] for k in owner_keys} for o in m["ownerReferences"]]}
                               for m in want]
    assert [m.get("deletionTimestamp") for m in items1 + items2] == [None, None, want[2]["deletionTimestamp"]]
    assert "managedFields" not in items1[0]


def test_the_continue_token_is_read():
    _, token = protobuf.metadata_list(fixture("running-metadata.pb"))
    doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert doc["start"] == "/held-worker-1\x00"  # the first page of 3: held-master-0, held-worker-0 and -1


def test_not_protobuf_or_cut_short_is_a_value_error():
    with pytest.raises(ValueError):
        protobuf.metadata_list(b'{"kind": "Status"}')
    whole = fixture("metadata-page-1.pb")
    with pytest.raises(ValueError):
        protobuf.metadata_list(whole[:len(whole) // 2])


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (the tests' own writer)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_long_label_keys_and_fields_the_reader_skips():
    key = "example.com/" + "k" * 200  # a prefixed key longer than 127 bytes: a two-byte length
    meta = (_field(1, b"p-0") + _varint(7 << 3) + _varint(150)  # generation 150: a varint skipped
            + _field(11, _field(1, key.encode()) + _field(2, b"v")) + _field(11, _field(1, b"a") + _field(2, b""))
            + _field(17, b"\x00" * 300) + _field(5, b"uid-1"))
    data = protobuf.MAGIC + _field(2, _field(2, _field(1, meta)) + _field(1, _field(3, b"tok")))
    assert protobuf.metadata_list(data) == ([{"name": "p-0", "uid": "uid-1", "labels": {key: "v", "a": ""}}], "tok")
