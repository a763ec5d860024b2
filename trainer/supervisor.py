"""The supervisor: torchrun under a process that owns signals, deadlines and exit codes.

    python -m trainer run  ──▶  python -m trainer._torchrun  ──▶  python -m trainer.worker train.py
    (this module: PID 1)        (torchrun, own session)           (one per rank)

The kubelet signals only PID 1. On SIGTERM (or a cloud notice) the supervisor
writes a stop file that every local rank checks at its step boundary; the
ranks agree on the stop step in one collective, commit a checkpoint and exit.
The supervisor holds the grace deadline: at `grace - SUPERVISOR_GRACE_RESERVE`
it SIGTERMs torchrun, whose own shutdown timeout is derived from the same
reserve, and SIGKILLs what is left before the kubelet would. Then it maps
what happened onto the exit codes of `trainer.contract`.

It leaves no rank behind: torch starts each worker in a session of its own, so
killing torchrun's process group misses them, and a SIGKILLed torchrun left
both ranks training and committing into the run folder. The supervisor is a
child subreaper (PR_SET_CHILD_SUBREAPER): a killed torchrun's ranks become its
children, and on every exit path it SIGKILLs every descendant and reaps them. While
the ranks run it also reaps every orphan re-parented to it, as PID 1 must
(trainer/processes.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Mapping

from trainer import contract
from trainer.contract import ExitCode
from trainer.processes import descendants, parent_map, reap_orphans, set_child_subreaper

log = logging.getLogger("kubetrain.supervisor")
POLL_S = 0.1
REAP_EVERY_S = 1.0  # how often orphans re-parented to the supervisor are reaped (a /proc scan)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything `python -m trainer run` was asked to do (flags over KUBETRAIN_* env)."""

    script: str
    script_args: tuple[str, ...] = ()
    nproc_per_node: int | None = None
    checkpoint_uri: str = contract.DEFAULT_CHECKPOINT_DIR
    run_id: str = "default"
    every_steps: int = contract.DEFAULT_CHECKPOINT_EVERY_STEPS
    every_seconds: float = 0.0
    keep: int = contract.DEFAULT_CHECKPOINT_KEEP
    storage_timeout: float = contract.DEFAULT_STORAGE_TIMEOUT
    grace_seconds: float = contract.DEFAULT_GRACE_SECONDS
    hang_timeout: float = contract.DEFAULT_HANG_TIMEOUT
    preemption_url: str | None = None
    preemption_poll_seconds: float = contract.DEFAULT_PREEMPTION_POLL_SECONDS
    warm_start_from: str | None = None
    warm_start_optimizer: bool = False
    #: Restarts in a row without a newly committed step before the run exits CRASH_LOOP; None: no budget.
    max_restarts: int | None = None


def torchrun_shutdown_timeout(grace_seconds: float) -> int:
    """torchrun's --shutdown-timeout: it must fit in the reserve after the workers' deadline."""
    return max(1, int(min(contract.SUPERVISOR_GRACE_RESERVE, grace_seconds) / 2))


def torchrun_args(cfg: RunConfig, env: Mapping[str, str]) -> list[str]:
    """torchrun's arguments from our flags and the Kubeflow operator's environment.

    Elastic jobs (PET_RDZV_*) are left to torchrun, which reads PET_* itself.
    Static multi-node jobs get the master's address and port and the node rank: MASTER_ADDR/PORT
    from the training operator v1, PET_MASTER_ADDR/PORT from Kubeflow Trainer v2's Torch plugin
    (a TrainJob's pods have no MASTER_ADDR).
    Anything else is one node: --standalone picks a free port on loopback.
    """
    nproc = cfg.nproc_per_node or int(env.get("PET_NPROC_PER_NODE") or 1)
    args = [f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=0.1",
            f"--shutdown-timeout={torchrun_shutdown_timeout(cfg.grace_seconds)}"]
    nnodes = env.get("PET_NNODES") or "1"
    master = env.get("MASTER_ADDR") or env.get("PET_MASTER_ADDR")
    if env.get("PET_RDZV_ENDPOINT") or env.get("PET_RDZV_BACKEND") or ":" in nnodes:
        pass
    elif master and nnodes != "1":
        port = env.get("MASTER_PORT") or env.get("PET_MASTER_PORT") or 29500
        args += [f"--nnodes={nnodes}", f"--node-rank={env.get('PET_NODE_RANK') or env.get('RANK') or 0}",
                 f"--master-addr={master}", f"--master-port={port}"]
    else:
        args += ["--standalone", "--nnodes=1"]
    return args + ["-m", "trainer.worker", cfg.script, *cfg.script_args]


def worker_env(cfg: RunConfig, base: Mapping[str, str], control_dir: str,
               prefetch_dir: str | None = None) -> dict[str, str]:
    """The environment of torchrun and its workers: ours on top of the pod's."""
    env = dict(base)
    env.pop(contract.ENV_PREFETCH_DIR, None)  # only ever this supervisor's own
    if prefetch_dir:
        env[contract.ENV_PREFETCH_DIR] = prefetch_dir
    env.update({
        contract.ENV_CHECKPOINT_URI: cfg.checkpoint_uri,
        contract.ENV_RUN_ID: cfg.run_id,
        contract.ENV_CHECKPOINT_EVERY_STEPS: str(cfg.every_steps),
        contract.ENV_CHECKPOINT_EVERY_SECONDS: str(cfg.every_seconds),
        contract.ENV_CHECKPOINT_KEEP: str(cfg.keep),
        contract.ENV_STORAGE_TIMEOUT: str(cfg.storage_timeout),
        contract.ENV_GRACE_SECONDS: str(cfg.grace_seconds),
        contract.ENV_CONTROL_DIR: control_dir,
        "PYTHONUNBUFFERED": "1",
    })
    if cfg.warm_start_from:  # the Checkpointer in each worker reads these
        env[contract.ENV_WARM_START_FROM] = cfg.warm_start_from
        env[contract.ENV_WARM_START_OPTIMIZER] = "1" if cfg.warm_start_optimizer else "0"
    # torchrun sets this to 1 for several ranks anyway, with a banner; same value, no banner.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# --- what happened → exit code (pure) ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    code: int
    summary: str
    root_cause: str | None = None  # a traceback, printed once
    #: What the exit code means this time, where the contract's general words would be untrue
    #: (143 without a committed checkpoint); None: contract.describe_exit_code.
    meaning: str | None = None


def classify(*, torchrun_rc: int, result: Mapping[str, Any] | None, errors: list[Mapping[str, Any]],
             preempted: Mapping[str, Any] | None, stop_reason: str | None, hang: str | None) -> Outcome:
    """Map the facts of a finished run onto the exit-code contract."""
    if hang:
        return Outcome(ExitCode.HANG, f"hang: {hang}; workers killed")
    if preempted is not None:
        return Outcome(ExitCode.PREEMPTED, f"preempted ({stop_reason or 'ranks on another node were stopping'}); "
                       f"checkpoint step {preempted.get('step')} committed")
    if result and result.get("usage_error"):  # before any worker started: a retry fails the same way
        return Outcome(ExitCode.USAGE, f"torchrun refused its arguments: {result['usage_error']}")
    if result and result.get("incompatible_torch"):
        return Outcome(ExitCode.USAGE, f"this torch cannot run torchrun: {result['incompatible_torch']}")
    if torchrun_rc == 0:
        return Outcome(ExitCode.OK, "finished")
    failures = list((result or {}).get("failures", []))
    config = sorted((e for e in errors if e.get("config_error")), key=lambda e: e.get("time", 0))
    if config:  # the object store refused the bucket or credentials: permanent, whoever died after it
        return Outcome(ExitCode.USAGE, config[0]["message"])
    user = sorted((e for e in errors if not e.get("comm_error") and not e.get("infra_error")),
                  key=lambda e: e.get("time", 0))
    infra = sorted((e for e in errors if e.get("infra_error")), key=lambda e: e.get("time", 0))
    killed = [f for f in failures if (f.get("exitcode") or 0) < 0
              and -f["exitcode"] not in (signal.SIGTERM, signal.SIGINT)]
    if killed and not user:
        f = killed[0]
        return Outcome(ExitCode.for_signal(-f["exitcode"]), f"rank {f['rank']} was killed by {f.get('signal')}")
    if stop_reason is not None:
        return Outcome(ExitCode.PREEMPTED, f"stopped ({stop_reason}) before a checkpoint committed; the next run "
                       "resumes from the last committed one",
                       meaning=f"stopped ({stop_reason}), no checkpoint committed by this run")
    if user:
        e = user[0]
        return Outcome(ExitCode.USER_ERROR, f"rank {e['rank']} raised {e['type']}: {e['message']}", e.get("traceback"))
    if infra:  # checkpoint storage kept failing: retry later rather than fail the job for good
        e = infra[0]
        return Outcome(ExitCode.INFRA, f"rank {e['rank']}: {e['type']}: {e['message']}")
    if killed:
        f = killed[0]
        return Outcome(ExitCode.for_signal(-f["exitcode"]), f"rank {f['rank']} was killed by {f.get('signal')}")
    # A rank that exited on its own (sys.exit(N)) rather than because a peer vanished.
    comm_ranks = {e.get("rank") for e in errors if e.get("comm_error")}
    direct = sorted((f for f in failures if (f.get("exitcode") or 0) > 0 and f["rank"] not in comm_ranks),
                    key=lambda f: f.get("time", 0))
    if direct:
        f = direct[0]
        return Outcome(f["exitcode"] if f["exitcode"] < 256 else ExitCode.USER_ERROR,
                       f"rank {f['rank']} exited with {f['exitcode']}")
    if any((f.get("exitcode") or 0) < 0 for f in failures):
        f = next(f for f in failures if f["exitcode"] < 0)
        return Outcome(ExitCode.for_signal(-f["exitcode"]), f"rank {f['rank']} was killed by {f.get('signal')}")
    if errors:
        e = sorted(errors, key=lambda e: e.get("time", 0))[0]
        return Outcome(ExitCode.INFRA, f"rank {e['rank']} lost its peers: {e['type']}: {e['message']}")
    if result and result.get("agent_error"):
        return Outcome(ExitCode.INFRA, f"torchrun failed: {result['agent_error']}")
    if torchrun_rc < 0:
        return Outcome(ExitCode.for_signal(-torchrun_rc), f"torchrun was killed by signal {-torchrun_rc}")
    return Outcome(torchrun_rc if torchrun_rc >= 128 else ExitCode.INFRA, f"torchrun exited with {torchrun_rc}")


def stalled_ranks(progress: Mapping[int, tuple[int, float]], expected_ranks: list[int], *, now: float,
                  timeout: float) -> dict[int, tuple[int | None, float]]:
    """Ranks whose last step ended more than `timeout` ago: {rank: (last step or None, seconds)}.

    Only once some rank has reported progress: a script that does not use the
    checkpoint API never reports, and the watchdog cannot judge it. A rank yet to
    report is judged from the first report of any rank, not from the start: a
    start slower than the timeout (imports on a busy machine) flagged the rank
    that happened to report a moment after its peer.
    """
    if timeout <= 0 or not progress:
        return {}
    first = min(at for _, at in progress.values())
    out = {}
    for r in expected_ranks:
        step, at = progress.get(r, (None, first))
        if now - at > timeout:
            out[r] = (step, now - at)
    return out


# --- the process -----------------------------------------------------------------------


class Supervisor:
    def __init__(self, cfg: RunConfig, env: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.env = dict(os.environ if env is None else env)
        self._wake = threading.Event()
        self._stop_reason: str | None = None
        self._interrupts = 0
        self._proc: subprocess.Popen | None = None
        self._ledger = None  # trainer.ledger.Ledger once the start is recorded
        self._verdict = None  # node 0's crash-loop verdict, seen by another node while its ranks start

    def request_stop(self, reason: str) -> None:
        """Ask the ranks to checkpoint and stop; safe from a signal handler or a thread."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._wake.set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
        self.request_stop(signal.Signals(signum).name)

    def run(self) -> int:
        early = self._begin_ledger()
        if early is not None:
            self._report(early)
            return int(early.code)
        given = self.env.get(contract.ENV_CONTROL_DIR)  # `launch chaos` watches progress there
        control = given or tempfile.mkdtemp(prefix="kubetrain-control-")
        os.makedirs(control, exist_ok=True)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        if not set_child_subreaper(True):
            log.warning("cannot become a child subreaper (prctl); ranks of a killed torchrun may outlive it")
        # Light (no torch): the download overlaps the ranks' start; see checkpoint/prefetch.py.
        from trainer.checkpoint.prefetch import Prefetch

        prefetch = Prefetch(self.cfg.checkpoint_uri, self.cfg.run_id)
        poller = None
        if self.cfg.preemption_url:
            from trainer.preemption import NoticePoller

            poller = NoticePoller(self.cfg.preemption_url, self.cfg.preemption_poll_seconds, self.request_stop)
            poller.start()
        training = threading.Event()  # some local rank reported a step: rendezvous is over
        if self._ledger is not None:
            self._ledger.watch_verdict(self._on_verdict, training)
        last_step = None
        try:
            outcome = self._supervise(control, prefetch.start(), training)
            steps = [s for s, _ in _read_progress(control).values()]
            last_step = max(steps) if steps else None
        finally:
            training.set()
            if poller is not None:
                poller.stop()
            self._kill_group(signal.SIGKILL)
            self._kill_descendants()
            set_child_subreaper(False)
            prefetch.close()
            for s, h in previous.items():
                signal.signal(s, h)
            if not given:
                shutil.rmtree(control, ignore_errors=True)
        outcome = self._finish_ledger(outcome, last_step)
        self._report(outcome)
        return int(outcome.code)

    def _begin_ledger(self) -> Outcome | None:
        """Record this start in the run's restart ledger; an Outcome when the run must not start."""
        from trainer.errors import StorageConfigError, UsageError
        from trainer.ledger import Ledger

        try:
            ledger = Ledger.open(self.cfg.checkpoint_uri, self.cfg.run_id, contract.operator_node_rank(self.env),
                                 self.cfg.max_restarts)
            verdict = ledger.begin()
        except (StorageConfigError, UsageError) as e:
            return Outcome(ExitCode.USAGE, str(e))
        self._ledger = ledger
        if verdict is not None:
            return Outcome(ExitCode.CRASH_LOOP, verdict.message)
        return None

    def _on_verdict(self, verdict) -> None:
        self._verdict = verdict
        self._wake.set()

    def _finish_ledger(self, outcome: Outcome, last_step: int | None) -> Outcome:
        if self._ledger is None:
            return outcome
        # Inside the grace period when stopping: the kubelet's SIGKILL would cut a longer wait short.
        timeout = contract.SUPERVISOR_GRACE_RESERVE / 2 if self._stop_reason else 10.0
        verdict = self._ledger.finish(int(outcome.code), outcome.summary, last_step=last_step, timeout=timeout)
        if verdict is not None:
            return Outcome(ExitCode.CRASH_LOOP, f"{verdict.message}; this attempt: {outcome.summary}",
                           outcome.root_cause)
        return outcome

    def _supervise(self, control: str, prefetch_dir: str | None, training: threading.Event) -> Outcome:
        cfg = self.cfg
        nproc = cfg.nproc_per_node or int(self.env.get("PET_NPROC_PER_NODE") or 1)
        cmd = [sys.executable, "-m", "trainer._torchrun", *torchrun_args(cfg, self.env)]
        log.info("starting %d rank(s) of %s; checkpoints in %s/%s", nproc, cfg.script, cfg.checkpoint_uri, cfg.run_id)
        # Own session: a terminal's Ctrl-C reaches only us, and we decide what the ranks see.
        self._proc = subprocess.Popen(cmd, env=worker_env(cfg, self.env, control, prefetch_dir),
                                      start_new_session=True)
        first_rank = _node_ranks_start(self.env, nproc)
        local_ranks = list(range(first_rank, first_rank + nproc))
        stop_sent_at: float | None = None
        workers_deadline = hard_deadline = None
        hang: str | None = None
        next_reap = 0.0
        while self._proc.poll() is None:
            self._wake.wait(POLL_S)
            self._wake.clear()
            now = time.monotonic()
            if now >= next_reap:
                reap_orphans(keep=frozenset({self._proc.pid}))
                next_reap = now + REAP_EVERY_S
                self._note_progress(control, training)
            if self._verdict is not None and stop_sent_at is None and hang is None:
                log.error("node 0 stopped the run: %s; stopping this node's ranks", self._verdict.message)
                stop_sent_at = now
                self._kill_group(signal.SIGKILL)
            if self._stop_reason and stop_sent_at is None:
                stop_sent_at = now
                with open(os.path.join(control, contract.CONTROL_STOP), "w") as f:
                    f.write(self._stop_reason)
                budget = max(cfg.grace_seconds - contract.SUPERVISOR_GRACE_RESERVE, 0.5)
                workers_deadline = now + budget
                hard_deadline = workers_deadline + torchrun_shutdown_timeout(cfg.grace_seconds) + 0.5
                log.warning("%s: asking the ranks to checkpoint and stop within %.0fs", self._stop_reason, budget)
                if self._ledger is not None:
                    self._ledger.update(stopping=self._stop_reason)
            if self._interrupts >= 2 and hard_deadline is not None:
                log.warning("second interrupt: killing the workers without a checkpoint")
                workers_deadline = hard_deadline = now
            if workers_deadline is not None and now >= workers_deadline:
                workers_deadline = None
                log.error("the ranks did not stop within the grace period; terminating them")
                self._signal_torchrun(signal.SIGTERM)
            if hard_deadline is not None and now >= hard_deadline:
                self._kill_group(signal.SIGKILL)
                hard_deadline = None
            if cfg.hang_timeout > 0 and stop_sent_at is None and hang is None:
                stalled = stalled_ranks(_read_progress(control), local_ranks, now=time.time(),
                                        timeout=cfg.hang_timeout)
                if stalled:
                    hang = "no step progress for %.0fs on %s" % (cfg.hang_timeout, ", ".join(
                        f"rank {r} (last step {s if s is not None else 'none'}, {age:.0f}s ago)"
                        for r, (s, age) in sorted(stalled.items())))
                    log.error("watchdog: %s; killing the workers", hang)
                    self._signal_torchrun(signal.SIGTERM)
                    time.sleep(torchrun_shutdown_timeout(cfg.grace_seconds) + 0.5)
                    self._kill_group(signal.SIGKILL)
        rc = self._proc.wait()
        self._note_progress(control, training)
        if self._verdict is not None:
            return Outcome(ExitCode.CRASH_LOOP, f"node 0 stopped the run: {self._verdict.message}")
        return classify(torchrun_rc=rc, result=_read_json(os.path.join(control, contract.CONTROL_RESULT)),
                        errors=_read_errors(control),
                        preempted=_read_json(os.path.join(control, contract.CONTROL_PREEMPTED)),
                        stop_reason=self._stop_reason, hang=hang)

    def _note_progress(self, control: str, training: threading.Event) -> None:
        """Move the ledger's progress mark to global rank 0's newest commit; note when training began."""
        if not training.is_set() and _read_progress(control):
            training.set()
        if self._ledger is None or self._ledger.record is None:
            return
        from trainer.ledger import read_committed

        committed = read_committed(control)
        if committed is not None and committed[0] != self._ledger.record.committed:
            self._ledger.update(committed=committed[0], committed_at=committed[1])

    def _signal_torchrun(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.kill(self._proc.pid, sig)
            except ProcessLookupError:
                pass

    def _kill_group(self, sig: int) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_descendants(self) -> None:
        """SIGKILL every process below this one and reap those that are (now) our children.

        torchrun's group is not enough: its workers run in their own sessions. Repeated, since
        a process may fork while we kill its parent; the subreaper keeps the orphans ours.
        """
        me = os.getpid()
        for _ in range(50):
            pids = descendants(me, parent_map())
            if not pids:
                return
            log.warning("killing %d process(es) left below the supervisor: %s", len(pids),
                        " ".join(map(str, pids)))
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                left = [p for p in descendants(me, parent_map()) if p in pids]
                for pid in left:
                    if self._proc is not None and pid == self._proc.pid:
                        continue  # Popen reaps its own
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
                if not left:
                    break
                time.sleep(0.02)

    def _report(self, outcome: Outcome) -> None:
        if outcome.root_cause:
            sys.stderr.write("kubetrain: root cause (first failure; other ranks' errors follow from it):\n")
            sys.stderr.write(outcome.root_cause if outcome.root_cause.endswith("\n") else outcome.root_cause + "\n")
        level = logging.INFO if outcome.code == 0 else logging.ERROR
        log.log(level, "%s; exit %d (%s)", outcome.summary, outcome.code,
                (outcome.meaning or contract.describe_exit_code(outcome.code))
                + ("; retryable" if contract.is_retryable(outcome.code) else "" if outcome.code == 0 else "; permanent"))


def _node_ranks_start(env: Mapping[str, str], nproc: int) -> int:
    return contract.operator_node_rank(env) * nproc


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def _read_errors(control: str) -> list[dict]:
    out = []
    for name in sorted(os.listdir(control)):
        if name.startswith(contract.CONTROL_ERROR_PREFIX):
            doc = _read_json(os.path.join(control, name))
            if doc:
                out.append(doc)
    return out


def _read_progress(control: str) -> dict[int, tuple[int, float]]:
    out = {}
    for name in os.listdir(control):
        if name.startswith(contract.CONTROL_PROGRESS_PREFIX) and not name.endswith(".tmp"):
            try:
                with open(os.path.join(control, name)) as f:
                    step, at = f.read().split()
                out[int(name[len(contract.CONTROL_PROGRESS_PREFIX):])] = (int(step), float(at))
            except (OSError, ValueError):
                continue
    return out
