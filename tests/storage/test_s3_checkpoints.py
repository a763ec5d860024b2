"""Checkpoints over the S3 protocol: moto's server on 127.0.0.1, with and without injected faults."""

from __future__ import annotations

import signal
import time

import pytest
import torch

from tests.s3 import SECRET
from tests.helpers import EXAMPLE, assert_no_workers, read_json, run, start, wait_for
from trainer import contract
from trainer.checkpoint import Checkpointer
from trainer.errors import CheckpointError

pytestmark = pytest.mark.storage
STEPS = 100


def latest(s3_env, run_id="exp"):
    try:
        obj = s3_env["client"].get_object(Bucket=s3_env["bucket"], Key=f"ckpts/{run_id}/latest")
    except s3_env["client"].exceptions.NoSuchKey:
        return None
    return int(obj["Body"].read())


def args(s3_env, result, *extra):
    return ["--nproc-per-node", "2", "--checkpoint", f"s3://{s3_env['bucket']}/ckpts", "--run-id", "exp",
            "--checkpoint-every-steps", "20", *extra, EXAMPLE, "--steps", str(STEPS), "--samples", "2048",
            "--hidden", "64", "--result", result]


def preempt_and_resume(tmp_path, s3_env, rng) -> dict:
    result = str(tmp_path / "result.json")
    proc = start(args(s3_env, result) + ["--step-sleep", "0.03"], env=s3_env["env"], log_path=str(tmp_path / "log"))
    wait_for(lambda: latest(s3_env) is not None, 120, "the first checkpoint in S3")
    time.sleep(rng.uniform(0, 1.0))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143, open(tmp_path / "log").read()
    stopped = latest(s3_env)
    assert f"checkpoint step {stopped} committed" in open(tmp_path / "log").read()
    assert_no_workers(result)
    r = run(args(s3_env, result), env=s3_env["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    for text in (r.stdout + r.stderr, open(tmp_path / "log").read()):
        assert SECRET not in text and s3_env["env"]["AWS_ACCESS_KEY_ID"] not in text
    out = read_json(result)
    assert out["resumed_from"] == stopped
    return out


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    d = tmp_path_factory.mktemp("s3-baseline")
    r = run(["--nproc-per-node", "2", "--checkpoint", str(d / "ck"), EXAMPLE, "--steps", str(STEPS), "--samples",
             "2048", "--hidden", "64", "--result", str(d / "r.json")])
    assert r.returncode == 0, r.stdout + r.stderr
    return read_json(str(d / "r.json"))


def test_sigterm_commits_to_s3_and_the_rerun_resumes_bit_identical(tmp_path, s3_env, baseline, rng):
    assert preempt_and_resume(tmp_path, s3_env, rng)["sha256"] == baseline["sha256"]


def test_through_a_proxy_failing_10_percent_of_requests_checkpoints_still_commit(tmp_path, s3_env, fault_proxy,
                                                                                  baseline, rng):
    assert preempt_and_resume(tmp_path, s3_env, rng)["sha256"] == baseline["sha256"]
    assert fault_proxy.counts["503"] + fault_proxy.counts["500"] + fault_proxy.counts["reset"] > 0


def test_an_s3_outage_is_loud_and_latest_stays_on_the_last_commit(s3_env, fault_proxy, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # the outage outlasts any retry budget; no need to wait it out
    fault_proxy.rate = 0.0
    uri = f"s3://{s3_env['bucket']}/ckpts"
    model = torch.nn.Linear(64, 64)
    ck = Checkpointer(model, uri=uri, run_id="exp", max_failures=1)
    ck.save(10, blocking=True)
    fault_proxy.fail_all_writes = True
    with pytest.raises(CheckpointError, match="SlowDown|503|failed after"):
        ck.save(20, blocking=True)
    fault_proxy.fail_all_writes = False
    assert latest(s3_env) == 10
    keys = [o["Key"] for o in s3_env["client"].list_objects_v2(Bucket=s3_env["bucket"]).get("Contents", [])]
    assert not any(k.endswith(f"{contract.step_dir_name(20)}/{contract.MANIFEST_NAME}") for k in keys)
    assert Checkpointer(torch.nn.Linear(64, 64), uri=uri, run_id="exp").restore() == 10


def test_a_node_downloads_the_replicated_state_once_for_its_ranks_and_falls_back_together(
        tmp_path, s3_env, fault_proxy):
    fault_proxy.rate = 0.0  # a plain proxy: it records every request that reaches the server
    spool = tmp_path / "spool"
    env = {**s3_env["env"], contract.ENV_SPOOL_DIR: str(spool)}
    result = str(tmp_path / "result.json")
    r = run(args(s3_env, result), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    newest = latest(s3_env)
    key = f"ckpts/exp/{contract.step_dir_name(newest)}/state.pt"
    body = bytearray(s3_env["client"].get_object(Bucket=s3_env["bucket"], Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3_env["client"].put_object(Bucket=s3_env["bucket"], Key=key, Body=bytes(body))
    fault_proxy.forwarded.clear()

    r = run(args(s3_env, result), env=env)  # 2 ranks on one node restore through the proxy
    assert r.returncode == 0, r.stdout + r.stderr
    previous = newest - 20
    assert read_json(result)["resumed_from"] == previous  # both ranks passed over the corrupt step
    assert "prefetch of the newest checkpoint failed" in r.stderr and "does not match its manifest" in r.stderr
    # The supervisor's prefetch of the corrupt step, then local rank 0's own try (for both ranks),
    # then the step before it, once: 2 ranks each fetching for themselves would be 5 downloads.
    assert sorted(state_gets(fault_proxy, s3_env)) == sorted([newest, newest, previous]), fault_proxy.forwarded
    assert [p.name for p in spool.iterdir()] == []  # handoff and prefetch files removed


def test_the_supervisor_prefetches_the_newest_state_while_the_ranks_start(tmp_path, s3_env, fault_proxy):
    fault_proxy.rate = 0.0
    env = {**s3_env["env"], contract.ENV_SPOOL_DIR: str(tmp_path / "spool")}
    result = str(tmp_path / "result.json")
    r = run(args(s3_env, result), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    fault_proxy.forwarded.clear()
    r = run(args(s3_env, result), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_json(result)["resumed_from"] == STEPS
    assert f"prefetched {contract.step_dir_name(STEPS)}/state.pt" in r.stderr, r.stderr
    assert state_gets(fault_proxy, s3_env) == [STEPS]  # the supervisor's download served both ranks
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_warm_start_from_s3_downloads_the_other_runs_state_once_per_node(tmp_path, s3_env, fault_proxy):
    fault_proxy.rate = 0.0
    env = {**s3_env["env"], contract.ENV_SPOOL_DIR: str(tmp_path / "spool")}
    r = run(args(s3_env, str(tmp_path / "first.json")), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    fault_proxy.forwarded.clear()
    source = f"s3://{s3_env['bucket']}/ckpts/exp"
    warm = [a if a != "exp" else "exp-next" for a in args(s3_env, str(tmp_path / "next.json"))]
    r = run(["--warm-start-from", source, *warm], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert contract.LOG_WARM_START.format(uri=source, step=STEPS) in r.stdout + r.stderr
    assert state_gets(fault_proxy, s3_env) == [STEPS]  # local rank 0's download, handed to rank 1
    assert list((tmp_path / "spool").iterdir()) == []


def state_gets(proxy, s3_env) -> list[int]:
    """The steps whose state.pt was downloaded through `proxy`, once per GET."""
    prefix = f"/{s3_env['bucket']}/ckpts/exp/"
    paths = [p.split("?")[0] for method, p in proxy.forwarded if method == "GET"]
    return [contract.parse_step_dir_name(p[len(prefix):].split("/")[0]) for p in paths
            if p.startswith(prefix) and p.endswith("/state.pt")]


def test_a_corrupt_object_in_s3_is_never_loaded(s3_env):
    uri = f"s3://{s3_env['bucket']}/ckpts"
    model = torch.nn.Linear(16, 16)
    ck = Checkpointer(model, uri=uri, run_id="c", keep=5)
    ck.save(1, blocking=True)
    ck.save(2, blocking=True)
    key = f"ckpts/c/{contract.step_dir_name(2)}/state.pt"
    body = bytearray(s3_env["client"].get_object(Bucket=s3_env["bucket"], Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3_env["client"].put_object(Bucket=s3_env["bucket"], Key=key, Body=bytes(body))
    assert Checkpointer(torch.nn.Linear(16, 16), uri=uri, run_id="c").restore() == 1


def test_large_files_go_multipart_and_prune_deletes_old_steps(s3_env):
    uri = f"s3://{s3_env['bucket']}/ckpts"
    model = torch.nn.Linear(2048, 4096)  # 32 MiB of weights: above the multipart threshold
    ck = Checkpointer(model, uri=uri, run_id="big", keep=1)
    ck.save(1, blocking=True)
    ck.save(2, blocking=True)
    ck.wait()
    prefixes = s3_env["client"].list_objects_v2(Bucket=s3_env["bucket"], Prefix="ckpts/big/", Delimiter="/")
    assert sorted(p["Prefix"] for p in prefixes["CommonPrefixes"]) == [f"ckpts/big/{contract.step_dir_name(2)}/"]
    head = s3_env["client"].head_object(Bucket=s3_env["bucket"], Key=f"ckpts/big/{contract.step_dir_name(2)}/state.pt")
    assert "-" in head["ETag"]  # a multipart ETag
