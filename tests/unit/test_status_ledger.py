"""`launch status`'s restart ledger block, on a ledger the runtime recorded (a node-tier chaos run)."""

from __future__ import annotations

import os

from launcher import objectstore
from launcher.status import ledger as rl
from tests.helpers import REPO
from trainer import contract

RECORDED = os.path.join(REPO, "tests", "fixtures", "ledger-chaos")  # 2 nodes; node 0's first start died with 201


def recorded() -> dict[str, bytes]:
    return {n: open(os.path.join(RECORDED, n), "rb").read() for n in sorted(os.listdir(RECORDED))}


def job(uri: str | None = "s3://bucket/ckpts", run_id: str = "real", max_restarts: str = "3") -> dict:
    env = [{"name": contract.ENV_RUN_ID, "value": run_id}, {"name": contract.ENV_MAX_RESTARTS, "value": max_restarts}]
    if uri:
        env.append({"name": contract.ENV_CHECKPOINT_URI, "value": uri})
    template = {"spec": {"containers": [{"name": contract.CONTAINER_NAME, "env": env}]}}
    return {"spec": {"pytorchReplicaSpecs": {"Worker": {"template": template}, "Master": {"template": template}}}}


def test_a_recorded_ledger_shows_each_incident_and_the_goodput():
    attempts = contract.parse_ledger(recorded())
    summary = contract.summarize_ledger(attempts, now=attempts[-1].started_at + 83.06, max_restarts=3)
    lines = rl.lines(summary)
    assert lines[0] == ("ledger    goodput 38% since 2026-12-02T15:59:35Z, 2 start(s), 1 incident(s), "
                        "3 step(s) redone, 2s lost")
    assert lines[1].split() == ["STARTED", "FROM", "STEP", "ENDED", "REDONE", "LOST", "CAUSE"]
    row = lines[2]
    assert row.startswith("  2026-12-02T15:59:35Z  -          2026-12-02T15:59:51Z  3       2s    exit 201: rank 0 lost")
    assert row.endswith("…") and len(row.split("exit 201")[1]) < 80  # a long cause is cut, on one line
    assert len(lines) == 3  # the finished start is no incident

    d = rl.doc(summary)
    assert d["attempts"] == 2 and d["goodput"] == 0.3762 and not d["crash_loop"]
    (incident,) = d["incidents"]
    assert incident["code"] == 201 and incident["steps_redone"] == 3 and incident["resumed_from"] is None
    assert incident["cause"].startswith("rank 0 lost its peers") and round(incident["seconds_lost"], 1) == 1.8


def read(job, now, read=objectstore.read_json_objects, timeout=rl.READ_TIMEOUT):
    """As `launch status` reads the ledger: its folder from the job, the objects through launcher/objectstore.py."""
    where = rl.location(job)
    got = objectstore.BoundedRead(rl.folder(*where[:2]), read, timeout).result() if where else (None, None)
    return rl.summarize(where, *got, now, timeout)


def test_the_reader_finds_the_folder_from_the_jobs_env_and_reads_it_through_fsspec(tmp_path):
    run = tmp_path / "ckpts" / "real" / contract.ATTEMPTS_DIR
    run.mkdir(parents=True)
    for name, raw in recorded().items():
        (run / name).write_bytes(raw)
    (run / "tmp-partial.json.part").write_bytes(b"{")
    summary, why = read(job(str(tmp_path / "ckpts")), now=2e9)
    assert why is None and summary.attempts == 2 and len(rl.incidents(summary)) == 1
    assert rl.location(job("s3://b/c/", "held", "")) == ("s3://b/c/", "held", None)
    assert rl.folder("s3://b/c/", "held") == "s3://b/c/held/attempts"


def test_a_ledger_that_cannot_be_read_is_one_line_and_never_an_error(tmp_path):
    def refused(path):
        raise PermissionError(f"Access Denied\n for {path}")

    summary, why = read(job(), now=0, read=refused)
    assert summary is None and why == "cannot read s3://bucket/ckpts/real/attempts (PermissionError: Access Denied for s3://bucket/ckpts/real/attempts)"
    assert rl.unread_line(why) == f"ledger    not shown: {why}"  # not a terminal: no escape codes

    def hangs(path):
        import time
        time.sleep(5)

    summary, why = read(job(), now=0, read=hangs, timeout=0.2)
    assert summary is None and why.endswith("(no answer within 0.2s)")
    assert read(job(uri=None), now=0) == (None, "the job has no checkpoint folder")
    summary, why = read(job(str(tmp_path / "none")), now=0)
    assert summary is None and why == f"no attempts recorded in {tmp_path}/none/real/attempts yet"
