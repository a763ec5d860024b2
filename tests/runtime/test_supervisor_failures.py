"""The supervisor tells failures apart and leaves nothing running: real torchrun, real signals."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.helpers import EXAMPLE, assert_no_workers, run, start, wait_for, worker_pids
from trainer import contract
from trainer.processes import descendants, parent_map

pytestmark = pytest.mark.runtime


def committed(ckpt: str) -> tuple[str | None, list[str]]:
    """(`latest`, every step folder) of the run `exp` under `ckpt`."""
    run_dir = os.path.join(ckpt, "exp")
    try:
        with open(os.path.join(run_dir, contract.LATEST_NAME)) as f:
            latest = f.read().strip()
    except FileNotFoundError:
        latest = None
    steps = sorted(n for n in os.listdir(run_dir) if n.startswith(contract.STEP_DIR_PREFIX)) \
        if os.path.isdir(run_dir) else []
    return latest, steps


def test_a_sigkilled_torchrun_leaves_no_rank_behind_and_nothing_commits_after_it(tmp_path):
    ckpt, marker = str(tmp_path / "ck"), str(tmp_path / "result.json")
    proc = start(["--nproc-per-node", "2", "--checkpoint", ckpt, "--run-id", "exp", "--checkpoint-every-steps", "5",
                  "--keep", "100", EXAMPLE, "--steps", "100000", "--samples", "1024", "--hidden", "32",
                  "--step-sleep", "0.02", "--result", marker], log_path=str(tmp_path / "log"))
    try:
        wait_for(lambda: committed(ckpt)[0] is not None, 120, "the first checkpoint")
        wait_for(lambda: len(worker_pids(marker)) == 2, 30, "both ranks")
        ranks = worker_pids(marker)
        torchrun = [p for p in descendants(proc.pid, parent_map()) if p not in ranks
                    and "trainer.torchrun_main" in open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")]
        assert len(torchrun) == 1, torchrun
        # The ranks run in sessions of their own, out of reach of a killpg of torchrun's group.
        assert all(os.getsid(r) != os.getsid(torchrun[0]) for r in ranks)
        os.kill(torchrun[0], signal.SIGKILL)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = open(tmp_path / "log").read()
    assert rc == 137, log
    assert_no_workers(marker)
    for pid in ranks:
        assert not os.path.exists(f"/proc/{pid}"), f"rank {pid} survived (or is an unreaped zombie)"
    after = committed(ckpt)
    time.sleep(3)  # ranks left behind committed a step every ~0.1-0.5 s here
    assert committed(ckpt) == after
    assert "killing 2 process(es) left below the supervisor" in log, log


def test_torchrun_refusing_its_arguments_is_permanent_not_an_infra_fault(tmp_path):
    # torchrun reads PET_* for its flags; a value it cannot parse is a usage error (exit 2) before any worker.
    r = run(["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ck"), EXAMPLE, "--steps", "2"],
            env={"PET_NODE_RANK": "first"}, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "torchrun refused its arguments" in out and "--node-rank" in out, out
    assert "exit 2 (usage; permanent)" in out and "infra" not in out


def test_script_arguments_that_abbreviate_torchrun_or_runtime_flags_reach_the_script(tmp_path):
    # torchrun's argparse took `--node` for an abbreviation of --node-rank and stopped the run (exit 2).
    script = tmp_path / "record_argv.py"
    script.write_text("import json, os, sys\n"
                      "with open(sys.argv[0] + f'.{os.environ[\"RANK\"]}.json', 'w') as f:\n"
                      "    json.dump(sys.argv[1:], f)\n")
    words = ["--node", "3", "--max", "5", "--local", "--nproc", "4", "--check", "--", "-m", "x"]
    r = run(["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ck"), str(script), *words], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for rank in (0, 1):
        assert json.loads((tmp_path / f"record_argv.py.{rank}.json").read_text()) == words


def test_a_missing_script_is_permanent(tmp_path):
    r = run(["--checkpoint", str(tmp_path / "ck"), str(tmp_path / "nope.py")], timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "does not exist" in r.stderr


def test_sigterm_before_any_checkpoint_committed_does_not_claim_one(tmp_path):
    script = tmp_path / "slow_start.py"
    script.write_text("import time\ntime.sleep(60)\n")  # never reaches a checkpoint
    proc = start(["--nproc-per-node", "2", "--checkpoint", str(tmp_path / "ck"), "--grace-seconds", "3",
                  str(script)], log_path=str(tmp_path / "log"))
    wait_for(lambda: len(worker_pids(str(script))) == 2, 60, "both ranks")
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(60)
    log = open(tmp_path / "log").read()
    assert rc == 143, log
    final = [line for line in log.splitlines() if "exit 143 (" in line]
    assert len(final) == 1, log
    # It used to end "exit 143 (preempted (SIGTERM), checkpoint committed; retryable)": untrue.
    assert "preempted (SIGTERM), checkpoint committed" not in final[0], final
    assert "exit 143 (stopped (SIGTERM), no checkpoint committed by this run; retryable)" in final[0], final
    assert_no_workers(str(script))



ORPHANS = """
import os, sys, time
from trainer.processes import proc_table
if os.environ.get("RANK") == "0":
    torchrun = os.getppid()
    supervisor = proc_table()[torchrun][0]
    if os.fork() == 0:  # a child that exits at once, leaving a grandchild for the subreaper
        if os.fork() == 0:
            time.sleep(0.3)
            with open(sys.argv[1], "w") as f:
                f.write(str(os.getppid()))
            os._exit(0)
        os._exit(0)
    os.wait()
    time.sleep(4)
    zombies = [p for p, (pp, st) in proc_table().items() if pp == supervisor and st == "Z"]
    print("orphan re-parented to the supervisor:", open(sys.argv[1]).read() == str(supervisor), flush=True)
    print("zombies of the supervisor:", len(zombies), flush=True)
"""


def test_orphans_reparented_to_the_supervisor_are_reaped_while_the_ranks_run(tmp_path):
    """What PID 1 of a container must do: a rank's grandchild whose parent exited ends as no zombie."""
    script = tmp_path / "orphans.py"
    script.write_text(ORPHANS)
    out = run(["--nproc-per-node", "1", "--checkpoint", str(tmp_path / "ckpt"), str(script),
               str(tmp_path / "orphan-parent")], timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    said = out.stdout + out.stderr
    assert "orphan re-parented to the supervisor: True" in said, said[-3000:]  # else the check below is empty
    assert "zombies of the supervisor: 0" in said, said[-3000:]
