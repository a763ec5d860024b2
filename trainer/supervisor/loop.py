"""The supervisor's process: start torchrun, watch it, hold the grace deadline, report one exit code."""

from __future__ import annotations

import contextlib
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
from trainer.settings import RunConfig
from trainer.supervisor.classify import Outcome, classify
from trainer.control_folder import (Committed, Preempted, Progress, RankError, StopRequest, TorchrunResult,
                                    clear_attempt)
from trainer.supervisor.in_place import budget_spent, restart_in_place, static_nodes
from trainer.supervisor.spare import SPARE_AFTER_TRAINING_S, Spare
from trainer.supervisor.torchrun_command import node_copy_bytes, torchrun_args, torchrun_shutdown_timeout, worker_env
from trainer.supervisor.watchdog import describe_stall, stalled_ranks

log = logging.getLogger("kubetrain.supervisor")
POLL_S = 0.1
REAP_EVERY_S = 1.0  # how often orphans re-parented to the supervisor are reaped (a /proc scan)


class Supervisor:
    def __init__(self, cfg: RunConfig, env: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.env = dict(os.environ if env is None else env)
        self._wake = threading.Event()
        self._stop_reason: str | None = None
        self._interrupts = 0
        self._proc: subprocess.Popen | None = None
        self._ledger = None  # trainer.ledger_io.Ledger once the start is recorded
        self._verdict = None  # node 0's crash-loop verdict, seen by another node while its ranks start
        self._lease = None  # trainer.writer_lease.WriterLease that node 0 holds while the run lives
        self._lost: str | None = None  # another job took the run folder over: why this one stops
        self.stop_requests: list[str] = []  # every stop asked for (signals, notices), for /metrics
        self.in_place_used = 0  # in-place restarts made (trainer/supervisor/in_place.py)
        self._spare: Spare | None = None  # the next in-place restart's torchrun, started ahead
        self._trained_at: float | None = None  # when this attempt's ranks first reported a step (monotonic)

    def request_stop(self, reason: str) -> None:
        """Ask the ranks to checkpoint and stop; safe from a signal handler or a thread."""
        self.stop_requests.append(reason)
        if self._stop_reason is None:
            self._stop_reason = reason
        self._wake.set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
        self.request_stop(signal.Signals(signum).name)

    def run(self) -> int:
        # The lease first: a start that is refused must write nothing into the run folder, not even
        # its ledger record.
        early = self._take_lease() or self._begin_ledger()
        if early is not None:
            self._release_lease()
            self._report(early)
            return int(early.code)
        if self._lease is not None:
            self._lease.start_heartbeat(self._on_lost)
        given = self.env.get(contract.ENV_CONTROL_DIR)  # `launch chaos` watches progress there
        control = given or tempfile.mkdtemp(prefix="kubetrain-control-")
        os.makedirs(control, exist_ok=True)
        metrics = self._start_metrics(control)
        status = self._start_trainjob_status(control)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        if not set_child_subreaper(True):
            log.warning("cannot become a child subreaper (prctl); ranks of a killed torchrun may outlive it")
        # Light (no torch): the download overlaps the ranks' start; see checkpoint/prefetch.py.
        from trainer.checkpoint.prefetch import Prefetch

        prefetch = Prefetch(self.cfg.checkpoint_uri, self.cfg.run_id, node_copy_dir=self.cfg.node_copy_dir,
                            node_copy_max_bytes=node_copy_bytes(self.cfg))
        poller = None
        if self.cfg.preemption_url:
            from trainer.supervisor.preemption import NoticePoller

            poller = NoticePoller(self.cfg.preemption_url, self.cfg.preemption_poll_seconds, self.request_stop)
            poller.start()
        training = threading.Event()  # some local rank reported a step: rendezvous is over
        if self._ledger is not None:
            self._ledger.watch_verdict(self._on_verdict, training)
        last_step = None
        try:
            prefetch_dir = prefetch.start()
            while True:
                outcome = self._supervise(control, prefetch_dir, training)
                steps = [p.step for p in Progress.read_all(control).values()]
                last_step = max(steps) if steps else None
                stop = self._next_in_place(outcome, last_step, control)
                if stop is not None:
                    outcome = stop
                    break
                # The prefetched step may be older than `latest` now: the new ranks read storage.
                prefetch_dir = None
                # Node 0's crash-loop verdict can come again until this generation trains: watch anew.
                training.set()
                training = threading.Event()
                if self._ledger is not None:
                    self._ledger.watch_verdict(self._on_verdict, training)
        finally:
            training.set()
            self._discard_spare()
            if poller is not None:
                poller.stop()
            if metrics is not None:
                metrics.close()
            if status is not None:
                # The last facts only at a clean finish: stopping, the grace period is the ranks'.
                status.close(final=not self._stopping() and last_step is not None)
            self._kill_group(signal.SIGKILL)
            self._kill_descendants()
            set_child_subreaper(False)
            prefetch.close()
            for s, h in previous.items():
                signal.signal(s, h)
            if not given:
                shutil.rmtree(control, ignore_errors=True)
        outcome = self._finish_ledger(outcome, last_step)
        self._release_lease()
        self._report(outcome)
        return int(outcome.code)

    def _start_metrics(self, control: str):
        """/metrics when --metrics-port is set (trainer/metrics/); None when off or not served."""
        if not self.cfg.metrics_port:
            return None
        from trainer import metrics

        return metrics.start(self.cfg.metrics_port, control=control, run_id=self.cfg.run_id,
                             node_rank=contract.operator_node_rank(self.env), ledger=self._ledger,
                             stop_requests=lambda: tuple(self.stop_requests))

    def _start_trainjob_status(self, control: str):
        """Node 0 posts progress to its TrainJob's status where the Trainer gave it the endpoint
        (trainer/trainjob_status.py); None elsewhere, or when --trainjob-status-seconds is 0."""
        if contract.operator_node_rank(self.env) != 0 or not self.cfg.trainjob_status_seconds:
            return None
        from trainer import trainjob_status

        return trainjob_status.start(self.env, self.cfg.trainjob_status_seconds, control=control, ledger=self._ledger)

    def _begin_ledger(self) -> Outcome | None:
        """Record this start in the run's restart ledger; an Outcome when the run must not start."""
        from trainer.errors import StorageConfigError, UsageError
        from trainer.ledger_io import Ledger

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

    def _take_lease(self) -> Outcome | None:
        """Node 0 takes the run folder's writer lease, other nodes check it; an Outcome (exit 2) when
        another live run writes the folder. A storage error leaves the lease off for this start."""
        from trainer.errors import StorageConfigError, UsageError, one_line
        from trainer.storage import open_storage
        from trainer.writer_lease import WriterLease

        try:
            lease = WriterLease.for_run(open_storage(self.cfg.checkpoint_uri), self.cfg.run_id, self.env)
            decision = lease.acquire() if contract.operator_node_rank(self.env) == 0 else lease.check()
        except (StorageConfigError, UsageError) as e:
            return Outcome(ExitCode.USAGE, str(e))
        except Exception as e:
            log.warning("writer lease unavailable (%s): this start does not check for another live writer",
                        one_line(str(e)))
            return None
        if not decision.take:
            return Outcome(ExitCode.USAGE, decision.reason)
        self._lease = lease
        return None

    def _release_lease(self) -> None:
        if self._lease is not None:
            # Inside the grace period when stopping, beside the ledger's end; a lease left behind only
            # holds off another job (this job's restart takes it over at once).
            self._lease.release(contract.SUPERVISOR_GRACE_RESERVE / 4 if self._stop_reason else 10.0)

    def _on_lost(self, message: str) -> None:
        self._lost = message
        self._wake.set()

    def _on_verdict(self, verdict) -> None:
        self._verdict = verdict
        self._wake.set()

    def _stopping(self) -> bool:
        return bool(self._stop_reason or self._verdict is not None or self._lost is not None)

    def _next_in_place(self, outcome: Outcome, last_step: int | None, control: str) -> Outcome | None:
        """Record the attempt's end and prepare the next one when it restarts in place (None); else the
        Outcome to exit with. The ledger's end of a restarted attempt is recorded here, the last one's by run()."""
        rule = dict(stopping=self._stopping(), static=static_nodes(self.env), used=self.in_place_used,
                    budget=self.cfg.in_place_restarts)
        if not restart_in_place(outcome, **rule):
            if budget_spent(outcome, **rule):
                log.error("in-place restart budget spent (--in-place-restarts %d): exiting %d for the cluster to "
                          "replace the pod", self.cfg.in_place_restarts, outcome.code)
            return outcome
        # Every process of the ended attempt is gone before the next one starts: no old rank may commit.
        self._kill_group(signal.SIGKILL)
        self._kill_descendants()
        ended = self._finish_ledger(outcome, last_step)
        if ended.code == ExitCode.CRASH_LOOP:
            self._ledger = None  # its end (the verdict) is recorded
            return ended
        # Cleared before the line: whoever reads the folder after it (`launch chaos`) sees the new attempt only.
        clear_attempt(control)
        self.in_place_used += 1
        log.warning("%s: %s", contract.LOG_RESTARTING_IN_PLACE.format(
            n=self.in_place_used, budget=self.cfg.in_place_restarts, code=int(outcome.code)), outcome.summary)
        if self._ledger is not None:
            self._ledger.begin_in_place()
        return None

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
        if self._stop_reason and self.in_place_used:
            # Asked to stop while an in-place restart was being prepared: no new ranks, nothing to commit.
            if self._ledger is not None:
                self._ledger.update(stopping=self._stop_reason)
            return Outcome(ExitCode.PREEMPTED, f"stopped ({self._stop_reason}) during an in-place restart, before "
                           "its ranks started; the next run resumes from the last committed step",
                           meaning=f"stopped ({self._stop_reason}), no checkpoint committed by this attempt")
        nproc = cfg.nproc_per_node or int(self.env.get("PET_NPROC_PER_NODE") or 1)
        self._trained_at = None
        argv = torchrun_args(cfg, self.env, self.in_place_used)
        env = worker_env(cfg, self.env, control, prefetch_dir)
        spare, self._spare = self._spare, None
        if spare is not None and spare.alive() and spare.env == env:
            log.info("starting %d rank(s) of %s from the %s; checkpoints in %s/%s", nproc, cfg.script,
                     "warm spare" if spare.warm_after is not None else "spare (still importing torch)",
                     cfg.checkpoint_uri, cfg.run_id)
            self._proc = spare.activate(argv)
        else:
            if spare is not None:
                spare.discard()
            log.info("starting %d rank(s) of %s; checkpoints in %s/%s", nproc, cfg.script, cfg.checkpoint_uri,
                     cfg.run_id)
            # Own session: a terminal's Ctrl-C reaches only us, and we decide what the ranks see.
            self._proc = subprocess.Popen([sys.executable, "-m", "trainer.torchrun_main", *argv], env=env,
                                          start_new_session=True)
        first_rank = contract.operator_node_rank(self.env) * nproc
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
                reap_orphans(keep=frozenset({self._proc.pid, *self._spare_pids()}))
                next_reap = now + REAP_EVERY_S
                self._note_progress(control, training)
                if self._spare is None and self._trained_at is not None and \
                        now - self._trained_at >= SPARE_AFTER_TRAINING_S and self._wants_spare():
                    self._spare = Spare(worker_env(cfg, self.env, control, None), control)
                if self._spare is not None and self._spare.became_warm():
                    log.info("%s (torch imported in %.1fs)", contract.LOG_SPARE_WARM, self._spare.warm_after)
            if self._verdict is not None and stop_sent_at is None and hang is None:
                log.error("node 0 stopped the run: %s; stopping this node's ranks", self._verdict.message)
                stop_sent_at = now
                self._kill_group(signal.SIGKILL)
            if self._lost is not None and stop_sent_at is None and hang is None:
                # No stop checkpoint: it would be a second writer's commit in the other run's folder.
                log.error("%s; killing this node's ranks", self._lost)
                stop_sent_at = now
                self._kill_group(signal.SIGKILL)
            if self._stop_reason and stop_sent_at is None:
                stop_sent_at = now
                StopRequest(self._stop_reason).write(control)
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
                stalled = stalled_ranks(Progress.read_all(control), local_ranks, now=time.time(),
                                        timeout=cfg.hang_timeout)
                if stalled:
                    hang = describe_stall(stalled, cfg.hang_timeout)
                    log.error("watchdog: %s; killing the workers", hang)
                    self._signal_torchrun(signal.SIGTERM)
                    time.sleep(torchrun_shutdown_timeout(cfg.grace_seconds) + 0.5)
                    self._kill_group(signal.SIGKILL)
        rc = self._proc.wait()
        self._note_progress(control, training)
        if self._verdict is not None:
            return Outcome(ExitCode.CRASH_LOOP, f"node 0 stopped the run: {self._verdict.message}")
        if self._lost is not None:
            return Outcome(ExitCode.USAGE, self._lost)
        return classify(torchrun_rc=rc, result=TorchrunResult.read(control), errors=RankError.read_all(control),
                        preempted=Preempted.read(control),
                        stop_reason=self._stop_reason, hang=hang)

    def _wants_spare(self) -> bool:
        """Whether the next attempt may be an in-place restart that a warm spare would start."""
        return (not self.cfg.cold_in_place_restarts and self.in_place_used < self.cfg.in_place_restarts
                and static_nodes(self.env) and not self._stopping())

    def _spare_pids(self) -> set[int]:
        return {self._spare.proc.pid} if self._spare is not None else set()

    def _discard_spare(self) -> None:
        if self._spare is not None:
            self._spare.discard()
            self._spare = None

    def _note_progress(self, control: str, training: threading.Event) -> None:
        """Move the ledger's progress mark to global rank 0's newest commit; note when training began."""
        if not training.is_set() and Progress.read_all(control):
            training.set()
            self._trained_at = time.monotonic()
        if self._ledger is None or self._ledger.record is None:
            return
        committed = Committed.read(control)
        if committed is not None and committed.step != self._ledger.record.committed:
            self._ledger.update(committed=committed.step, committed_at=committed.time)

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
            tree = parent_map()
            # The warm spare and its forkserver are the next attempt's, not this one's.
            spare = {p for s in self._spare_pids() for p in (s, *descendants(s, tree))}
            pids = [p for p in descendants(me, tree) if p not in spare]
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


