"""What the metrics read and delete in a checkpoint store, through boto3 or the file system directly."""

from __future__ import annotations

import os

import boto3

from trainer import contract


def delete_prefix(bucket: str, prefix: str) -> None:
    """Delete every object under a prefix: moto holds them all in memory, 20 trials at 1 GiB would not fit."""
    s3 = boto3.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def latest_step(uri: str, run_id: str) -> int | None:
    """The run's committed step (its `latest`), or None before the first commit.

    boto3 directly, not the runtime's storage: s3fs caches that an object was missing.
    """
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        s3 = boto3.client("s3")
        try:
            body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{run_id}/{contract.LATEST_NAME}")["Body"]
        except s3.exceptions.NoSuchKey:
            return None
        return int(body.read())
    try:
        with open(os.path.join(uri, run_id, contract.LATEST_NAME)) as f:
            return int(f.read())
    except FileNotFoundError:
        return None
