"""The few fields of pod metadata that `launch status` reads, from the API server's protobuf (pure).

Asked for as `application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io`
(what client-go's metadata informers ask for), a list carries each pod's ObjectMeta only. Most of
its bytes are `managedFields` (about 4 KB of a pod's 5): in JSON every byte of them is parsed
(json.loads of 4,096 pods' metadata, 21 MB, takes seconds here); in protobuf a length prefix
skips them. No protobuf library is needed for the handful of fields read:

    k8s\\0 magic, then runtime.Unknown {2: raw}, raw a PartialObjectMetadataList:
      {1: ListMeta {3: continue}, 2: repeated PartialObjectMetadata {1: ObjectMeta}}
    ObjectMeta {1: name, 3: namespace, 5: uid, 9: deletionTimestamp,
                11: labels (map entries {1: key, 2: value}), 13: ownerReferences, 17: managedFields}
    OwnerReference {1: kind, 3: name, 4: uid, 5: apiVersion, 6: controller}
    Time {1: seconds, 2: nanos}

(k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto, k8s.io/apimachinery/pkg/runtime/generated.proto.)
Each item becomes the `metadata` JSON of those fields, as the JSON form would have them.
"""

from __future__ import annotations

import datetime
from typing import Any, Iterator

MAGIC = b"k8s\x00"
METADATA_LIST = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _varint(b: bytes, i: int) -> tuple[int, int]:
    """(the value, the offset after it) of the varint at b[i]."""
    x = b[i]
    if x < 0x80:
        return x, i + 1
    value, shift = x & 0x7F, 7
    while True:
        i += 1
        x = b[i]
        value |= (x & 0x7F) << shift
        if x < 0x80:
            return value, i + 1
        shift += 7


def fields(b: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, Any]]:
    """(field number, value) of each field of the message b[start:end]: an int for a varint or a
    fixed-width field, (start, end) for a length-delimited one (a string, bytes, or a message)."""
    i, end = start, len(b) if end is None else end
    while i < end:
        key, i = _varint(b, i)
        number, wire = key >> 3, key & 7
        if wire == 2:
            n, i = _varint(b, i)
            yield number, (i, i + n)
            i += n
        elif wire == 0:
            value, i = _varint(b, i)
            yield number, value
        elif wire == 1:
            yield number, int.from_bytes(b[i:i + 8], "little")
            i += 8
        elif wire == 5:
            yield number, int.from_bytes(b[i:i + 4], "little")
            i += 4
        else:
            raise ValueError(f"protobuf: wire type {wire} at offset {i} is not one the API server writes")
    if i != end:
        raise ValueError("protobuf: a field runs past the end of its message")


def _text(b: bytes, span: tuple[int, int]) -> str:
    return b[span[0]:span[1]].decode()


def _time(b: bytes, span: tuple[int, int]) -> str:
    """A meta/v1 Time as the JSON has it: RFC 3339, whole seconds, Z."""
    seconds = next((v for n, v in fields(b, *span) if n == 1), 0)
    return (_EPOCH + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner(b: bytes, span: tuple[int, int]) -> dict[str, Any]:
    names = {1: "kind", 3: "name", 4: "uid", 5: "apiVersion"}
    out: dict[str, Any] = {}
    for n, v in fields(b, *span):
        if n in names:
            out[names[n]] = _text(b, v)
        elif n == 6:
            out["controller"] = bool(v)
    return out


def _label(b: bytes, i: int, end: int) -> tuple[str, str]:
    """A labels map entry {1: key, 2: value}: `0a len key 12 len value` when both are shorter than 128."""
    if end - i >= 4 and b[i] == 0x0A and b[i + 1] < 0x80:
        j = i + 2 + b[i + 1]
        if j + 1 < end and b[j] == 0x12 and b[j + 1] < 0x80 and j + 2 + b[j + 1] == end:
            return b[i + 2:j].decode(), b[j + 2:end].decode()
    key = value = ""
    for number, v in fields(b, i, end):
        if number == 1:
            key = _text(b, v)
        elif number == 2:
            value = _text(b, v)
    return key, value


def object_meta(b: bytes, span: tuple[int, int]) -> dict[str, Any]:
    """name, namespace, uid, deletionTimestamp, labels, ownerReferences: those present.

    One loop over the fields, inline: 4,096 pods' metadata is about 100,000 fields, and every other
    one (managedFields above all) is skipped by its length without being looked into.
    """
    out: dict[str, Any] = {}
    labels: dict[str, str] = {}
    owners: list[dict[str, Any]] = []
    i, end = span
    while i < end:
        key = b[i]
        if key < 0x80:
            i += 1
        else:
            key, i = _varint(b, i)
        number, wire = key >> 3, key & 7
        if wire != 2:  # generation, deletionGracePeriodSeconds: not read
            if wire != 0:
                raise ValueError(f"protobuf: ObjectMeta field {number} has wire type {wire}")
            _, i = _varint(b, i)
            continue
        n = b[i]
        if n < 0x80:
            i += 1
        else:
            n, i = _varint(b, i)
        j = i + n
        if number == 11:
            k, v = _label(b, i, j)
            labels[k] = v
        elif number == 1:
            out["name"] = b[i:j].decode()
        elif number == 5:
            out["uid"] = b[i:j].decode()
        elif number == 3:
            out["namespace"] = b[i:j].decode()
        elif number == 9:
            out["deletionTimestamp"] = _time(b, (i, j))
        elif number == 13:
            owners.append(_owner(b, (i, j)))
        i = j
    if i != end:
        raise ValueError("protobuf: a field runs past the end of its message")
    if labels:
        out["labels"] = labels
    if owners:
        out["ownerReferences"] = owners
    return out


def metadata_list(data: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """(each item's `metadata`, the list's continue token or None) of a PartialObjectMetadataList in protobuf.

    ValueError when `data` is not one (or ends inside a field).
    """
    if data[:4] != MAGIC:
        raise ValueError("protobuf: not a Kubernetes protobuf answer (no k8s\\0 prefix)")
    b = bytes(data[4:])
    try:
        raw = next((v for n, v in fields(b) if n == 2), None)
        if raw is None:
            raise ValueError("protobuf: the answer holds no object")
        items: list[dict[str, Any]] = []
        token = None
        for n, v in fields(b, *raw):
            if n == 2:  # PartialObjectMetadata {1: ObjectMeta}
                meta = next((m for k, m in fields(b, *v) if k == 1), None)
                items.append(object_meta(b, meta) if meta is not None else {})
            elif n == 1:  # ListMeta {3: continue}
                token = next((_text(b, t) for k, t in fields(b, *v) if k == 3), None) or None
    except IndexError as e:
        raise ValueError("protobuf: the answer ends inside a field") from e
    return items, token
