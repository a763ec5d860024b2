"""The restart ledger as a picture (launcher/status/timeline.py), from the recorded ledger fixtures:
one bar per start with its end, committed steps, lost time, goodput; text within 100 columns; the SVG
is a well-formed document; `launch status --timeline` reads the job's ledger or says in one line why not."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from launcher.status import timeline, timeline_out
from trainer import contract

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "ledger-chaos")


def fixture_attempts() -> list[contract.Attempt]:
    return contract.parse_ledger({n: open(os.path.join(FIXTURE, n), "rb").read() for n in os.listdir(FIXTURE)})


def test_the_recorded_ledger_draws_one_bar_per_start_within_100_columns():
    attempts = fixture_attempts()
    end = max(a.ended_at or a.started_at for a in attempts)
    lines = timeline.text(timeline.build(attempts, end))
    assert all(len(line) <= 100 for line in lines)
    assert lines[0] == "timeline  goodput 94%, 4 start(s) over 40s, 1 incident(s), 2s lost"
    bars = [line for line in lines if line.startswith("n")]
    assert [b[:6] for b in bars] == ["n0 #1 ", "n0 #2 ", "n1 #1 ", "n1 #2 "]
    assert bars[0].endswith("0→10 failed (exit 201) lost 2s") and "█X " in bars[0]
    assert bars[1].endswith("10→120 finished") and "█✓|" in bars[1]
    assert "lost" not in bars[2]  # node 1 records no commits: its loss is node 0's to tell
    assert lines[-2].startswith("steps  |") and lines[-2].endswith("committed, up to 120")


def test_the_steps_line_is_exact_at_recorded_points_and_straight_between():
    t = 1_000.0
    a = [contract.Attempt(name=contract.attempt_name(t, 0, "00000001"), node_rank=0, started_at=t, committed=100,
                          committed_at=t + 100, code=143, stopping="SIGTERM", ended_at=t + 110),
         contract.Attempt(name=contract.attempt_name(t + 120, 0, "00000002"), node_rank=0, started_at=t + 120,
                          resumed_from=100)]
    tl = timeline.build(a, t + 200)
    assert timeline.committed_at(tl, t + 50) == 50 and timeline.committed_at(tl, t + 115) == 100
    assert [b.kind for b in tl.bars] == ["preempted", "running"]
    assert tl.lost == 20  # from its last commit to the next start


def test_the_svg_is_one_well_formed_document_with_a_bar_per_start():
    attempts = fixture_attempts()
    doc = timeline.svg(timeline.build(attempts, max(a.ended_at or a.started_at for a in attempts)), title="a <run> & more")
    root = ET.fromstring(doc)
    assert root.tag.endswith("svg")
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "a <run> & more" in texts and sum(t.startswith("node ") for t in texts) == 4


def _job(uri="/nowhere", run_id="r"):
    env = [{"name": contract.ENV_CHECKPOINT_URI, "value": uri}, {"name": contract.ENV_RUN_ID, "value": run_id}]
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "j"},
            "spec": {"pytorchReplicaSpecs": {"Master": {"template": {"spec": {"containers": [
                {"name": contract.CONTAINER_NAME, "env": env}]}}}}}}


def test_status_timeline_writes_the_svg_or_says_in_one_line_why_not(tmp_path, capsys):
    objects = {n: open(os.path.join(FIXTURE, n), "rb").read() for n in os.listdir(FIXTURE)}
    out = tmp_path / "run.svg"
    assert timeline_out.show(_job(), str(out), read=lambda path: objects) == 0
    ET.fromstring(out.read_text())
    assert timeline_out.show(_job(), "-", read=lambda path: objects) == 0
    assert "timeline  goodput" in capsys.readouterr().out

    def refuse(path):
        raise PermissionError("AccessDenied")

    assert timeline_out.show(_job(), "-", read=refuse) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["launch: no timeline: cannot read /nowhere/r/attempts (PermissionError: AccessDenied)"]
