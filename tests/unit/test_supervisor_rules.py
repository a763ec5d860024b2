"""Pure rules of the supervisor: torchrun arguments, exit-code classification, the watchdog."""

import pytest

from trainer.control_folder import Preempted, Progress, RankError, RankFailure, TorchrunResult
from trainer.supervisor import RunConfig, classify, stalled_ranks, torchrun_args, torchrun_shutdown_timeout

CFG = RunConfig(script="train.py", script_args=("--lr", "1"))


@pytest.mark.parametrize("env,nproc,expected", [
    ({}, None, ["--standalone", "--nnodes=1"]),
    ({"PET_NPROC_PER_NODE": "4"}, None, ["--nproc-per-node=4", "--standalone"]),
    ({"MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "RANK": "1", "PET_NNODES": "2",
      "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": "8"}, None,
     ["--nproc-per-node=8", "--nnodes=2", "--node-rank=1", "--master-addr=job-master-0", "--master-port=23456"]),
    ({"PET_NNODES": "1:4", "PET_RDZV_BACKEND": "c10d", "PET_RDZV_ENDPOINT": "job-master-0:29400"}, 2,
     ["--nproc-per-node=2"]),
    ({"MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "PET_NNODES": "1"}, 2, ["--standalone"]),
    # A TrainJob's pod (Kubeflow Trainer v2's Torch plugin): PET_MASTER_* only.
    ({"PET_NNODES": "2", "PET_NPROC_PER_NODE": "8", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "job-node-0-0.job",
      "PET_MASTER_PORT": "29400"}, None,
     ["--nproc-per-node=8", "--nnodes=2", "--node-rank=1", "--master-addr=job-node-0-0.job", "--master-port=29400"]),
], ids=["local", "operator-single-node", "operator-static-multinode", "operator-elastic", "operator-one-node",
        "trainjob-static-multinode"])
def test_torchrun_args_follow_the_operator_env(env, nproc, expected):
    args = torchrun_args(RunConfig(script="train.py", script_args=("--lr", "1"), nproc_per_node=nproc), env)
    for a in expected:
        assert a in args
    assert args[-5:] == ["-m", "trainer.worker", "train.py", "--lr", "1"]
    assert "--max-restarts=0" in args  # the operator restarts pods; torchrun must not hide failures
    if "PET_RDZV_BACKEND" in env:
        assert not any(a.startswith(("--standalone", "--master-addr", "--nnodes")) for a in args)


def test_torchrun_shutdown_timeout_fits_in_the_supervisor_reserve():
    from trainer.contract import SUPERVISOR_GRACE_RESERVE

    for grace in (3, 30, 300):
        assert 1 <= torchrun_shutdown_timeout(grace) < SUPERVISOR_GRACE_RESERVE


def outcome(**kw):
    base = dict(torchrun_rc=1, result=None, errors=[], preempted=None, stop_reason=None, hang=None)
    return classify(**{**base, **kw})


def fail(rank, exitcode, sig=None, t=0.0):
    return RankFailure(rank=rank, exitcode=exitcode, signal=sig, time=t)


def failed(*failures, **kw):
    return TorchrunResult(failures=failures, **kw)


def err(rank, comm, t, typ="ValueError", **kw):
    return RankError(rank=rank, type=typ, message="m", time=t, comm_error=comm, traceback="Traceback\n", **kw)


@pytest.mark.parametrize("kw,code", [
    (dict(torchrun_rc=0), 0),
    (dict(torchrun_rc=0, stop_reason="SIGTERM", preempted=Preempted(step=5, time=0.0)), 143),
    (dict(torchrun_rc=0, stop_reason="SIGTERM"), 0),  # finished before it could stop
    (dict(hang="rank 1"), 200),
    (dict(result=failed(fail(0, 1), fail(1, -9, "SIGKILL")), errors=[err(0, True, 1.0)]), 137),
    (dict(result=failed(fail(0, 1), fail(1, -15, "SIGTERM")), errors=[err(0, False, 1.0)]), 1),
    (dict(result=failed(fail(0, 1), fail(1, 1)), errors=[err(1, False, 2.0), err(0, True, 1.0)]), 1),
    (dict(result=failed(fail(0, 1), fail(1, 3)), errors=[err(0, True, 1.0)]), 3),
    (dict(result=failed(fail(0, 1)), errors=[err(0, True, 1.0)]), 201),
    (dict(result=failed(agent_error="RendezvousTimeoutError"), torchrun_rc=201), 201),
    (dict(result=failed(fail(0, -15, "SIGTERM")), stop_reason="SIGTERM"), 143),
    (dict(torchrun_rc=-9), 137),
    (dict(result=failed(fail(0, 1)), errors=[err(0, False, 1.0, "CheckpointError", infra_error=True)]),
     201),
], ids=["ok", "preempted", "finished-despite-stop", "hang", "sigkill-beats-comm-error", "user-error-beats-sigterm",
        "first-user-error", "sys-exit-code-kept", "comm-only-is-infra", "rendezvous-is-infra",
        "stop-without-commit", "torchrun-killed", "storage-outage-is-infra"])
def test_classify(kw, code):
    assert outcome(**kw).code == code


def test_the_root_cause_is_the_earliest_non_comm_error():
    o = outcome(result=failed(fail(0, 1), fail(1, 1)),
                errors=[err(1, False, 2.0, "KeyError"), err(0, False, 1.0, "ValueError"), err(0, True, 0.5)])
    assert "rank 0 raised ValueError" in o.summary and o.root_cause


@pytest.mark.parametrize("progress,expected", [
    ({}, {}),  # no rank ever reported: the script does not use the API
    ({0: (5, 95.0), 1: (5, 99.0)}, {}),
    ({0: (5, 95.0), 1: (4, 80.0)}, {1: (4, 20.0)}),
    ({0: (5, 85.0)}, {0: (5, 15.0), 1: (None, 15.0)}),  # rank 1 never reached a step; rank 0 waits on it
    ({0: (5, 95.0)}, {}),  # rank 1 only reports a moment later: a slow start is no hang
])
def test_stalled_ranks(progress, expected):
    heartbeats = {rank: Progress(rank, step, at) for rank, (step, at) in progress.items()}
    assert stalled_ranks(heartbeats, [0, 1], now=100.0, timeout=10) == expected


def test_the_watchdog_is_off_at_timeout_zero():
    assert stalled_ranks({0: Progress(0, 1, 0.0)}, [0], now=1e9, timeout=0) == {}


def test_the_workers_look_for_a_prefetch_only_where_this_supervisor_made_one():
    from trainer import contract
    from trainer.supervisor import worker_env

    inherited = {contract.ENV_PREFETCH_DIR: "/tmp/someone-elses"}
    assert contract.ENV_PREFETCH_DIR not in worker_env(CFG, inherited, "/tmp/control")
    assert worker_env(CFG, inherited, "/tmp/control", "/spool/p")[contract.ENV_PREFETCH_DIR] == "/spool/p"


def _prefixes(options):
    """Every prefix of every option string, and the separators argparse treats apart."""
    return sorted({o[:k] for o in options for k in range(1, len(o) + 1)} | {"--", "-"})


@pytest.mark.parametrize("env", [{}, {"MASTER_ADDR": "job-master-0", "PET_NNODES": "2", "PET_NODE_RANK": "1"}],
                         ids=["standalone", "static-multi-node"])
def test_every_prefix_of_every_torchrun_option_reaches_the_script_unchanged(env):
    run = pytest.importorskip("torch.distributed.run")
    from trainer.torchrun_main import parse_torchrun_args

    options = [o for a in run.get_args_parser()._actions for o in a.option_strings]
    for word in _prefixes(options):
        script_args = (word, "3", f"{word}=5", word)
        argv = torchrun_args(RunConfig(script="train.py", script_args=script_args), env, generation=1)
        args = parse_torchrun_args(run.get_args_parser(), argv)
        assert (args.module, args.training_script) == (True, "trainer.worker"), word
        assert args.training_script_args == ["train.py", *script_args], word
        assert args.nproc_per_node == "1" and args.max_restarts == 0, word  # torchrun's own flags still parsed


def test_every_prefix_of_every_runtime_flag_after_the_script_reaches_the_script():
    from trainer.cli import build_parser, split_at_script

    run = build_parser({})._subparsers._group_actions[0].choices["run"]
    options = [o for a in run._actions for o in a.option_strings] + ["--node", "--max", "--local", "--nproc"]
    for word in _prefixes(options):
        for own in (["run"], ["run", "--nproc", "2", "--checkpoint=/tmp/x", "--warm-start-optimizer"]):
            argv = [*own, "train.py", "x", word, "3", word]
            head, script_args = split_at_script(argv)
            args = build_parser({}).parse_args(head)
            assert (args.script, script_args) == ("train.py", ["x", word, "3", word]), (own, word)
    # One `--` right after the script is the separator (`train.py -- --steps 5`); a second one is the script's.
    assert split_at_script(["run", "train.py", "--", "--steps", "5"])[1] == ["--steps", "5"]
    assert split_at_script(["run", "train.py", "--", "--", "a"])[1] == ["--", "a"]
    # Flags the parser must judge (unknown, ambiguous, `--`) go to it whole, as before.
    for argv in (["run", "--bogus", "train.py", "--x"], ["run", "--check", "x", "train.py"], ["run", "--", "t.py"]):
        assert split_at_script(argv) == (argv, None)
