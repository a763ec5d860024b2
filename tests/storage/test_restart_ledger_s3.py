"""The restart ledger on S3 (moto): one object per attempt, written by several nodes at once, and the
crash-loop verdict every node reads."""

from __future__ import annotations

import threading
import time

import pytest

from trainer import contract
from trainer.contract import ExitCode
from trainer.ledger_io import Ledger

pytestmark = pytest.mark.storage


def test_nodes_starting_together_each_write_their_own_record_and_node_0_stops_the_run(s3_env):
    uri = f"s3://{s3_env['bucket']}/ckpts"
    for round_ in range(2):
        ledgers = [Ledger.open(uri, "run", node, 1) for node in range(4)]
        threads = [threading.Thread(target=l.begin, kwargs={"now": time.time()}) for l in ledgers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        verdicts = [l.finish(201, "rank 3 lost its peers", last_step=None, timeout=10) for l in ledgers]
        assert [v is not None for v in verdicts] == [False, False, False, False] if round_ == 0 else \
            [True, False, False, False]
    client, bucket = s3_env["client"], s3_env["bucket"]
    listing = client.list_objects_v2(Bucket=bucket, Prefix=f"ckpts/run/{contract.ATTEMPTS_DIR}/")
    objects = {o["Key"].rsplit("/", 1)[-1]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
               for o in listing["Contents"]}
    attempts = contract.parse_ledger(objects)
    assert len(attempts) == 8 and contract.CRASH_LOOP_NAME in objects
    assert [a.code for a in contract.node_series(attempts, 0)] == [201, ExitCode.CRASH_LOOP]
    assert all(a.code == 201 for a in attempts if a.node_rank)
    for node in (0, 2):
        assert Ledger.open(uri, "run", node, 1).begin() is not None
