"""`Checkpointer`: restore on start, save on a cadence and on preemption.

    ckpt = Checkpointer(model, optimizer, scheduler, per_rank={"sampler": sampler})
    start = ckpt.restore()                  # 0, or the committed step to resume after
    for step in range(start, total_steps):
        train_one_step()
        ckpt.step_end(step + 1)             # saves when due; on preemption saves and exits
    ckpt.close(total_steps)                 # final, synchronous save

Every rank constructs the Checkpointer and calls every method in the same
order: saves, restores and the per-step stop check are collectives.

A save blocks training only while the state is copied off the live tensors
(`state.snapshot`); writing, uploading and committing happen on one
background thread, at most one save in flight. The final save and the
preemption save are synchronous. A failed upload is logged at once with its
cause, leaves `latest` untouched, and raises `CheckpointError` from the next
save after `max_failures` failures in a row (on every rank alike), or at once
for a synchronous save. Under the supervisor that exits 201: retryable.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from typing import Any, Mapping, Protocol

import torch

from trainer import contract, dist, resize
from trainer.checkpoint import handoff, layout, prefetch, state as st
from trainer.errors import CheckpointError, StorageConfigError, StorageError, one_line
from trainer.storage import FileInfo, Storage, file_info, join, open_storage, spool_dir

log = logging.getLogger("kubetrain.checkpoint")

#: Seconds a checkpoint collective may wait for a slow rank before it fails.
COORD_TIMEOUT_S = 1800.0
#: Rate limit of the watchdog heartbeat file: it only needs second resolution.
HEARTBEAT_EVERY_S = 0.25  # progress files for the watchdog and `launch chaos`: one small write per interval
#: The ranks' stop/save agreement (one all-reduce) runs every few steps when steps are short:
#: at most every AGREE_MAX_STEPS steps, and no more steps than fit in AGREE_WITHIN_S. Every
#: step, step_end cost 0.18-0.29 ms (mean) of a 7.5 ms CPU step, 3-4 %; every 4th, 0.06-0.10 ms
#: (2 gloo ranks, timed in-process, BENCHMARKS.md M7). A stop then waits at most two strides:
#: 2 x AGREE_WITHIN_S of the steps the stride was chosen for, 8 steps at most.
AGREE_WITHIN_S = 0.05
AGREE_MAX_STEPS = 4


def agreement_stride(slowest_step_s: float) -> int:
    """Steps until the next agreement, given this rank's slowest step since the last one (0: unknown)."""
    if slowest_step_s <= 0:
        return 1
    return max(1, min(AGREE_MAX_STEPS, int(AGREE_WITHIN_S / slowest_step_s)))


def _fault_file(name: str) -> str | None:
    """The path of a fault-injection file when `launch chaos` has put it there, else None."""
    folder = os.environ.get(contract.ENV_FAULTS_DIR)
    path = os.path.join(folder, name) if folder else None
    return path if path and os.path.exists(path) else None


def _injected_outage() -> None:
    if _fault_file(contract.FAULT_STORAGE_OUTAGE):
        raise StorageError(f"injected storage outage ({contract.ENV_FAULTS_DIR}/{contract.FAULT_STORAGE_OUTAGE})")


def _injected_slow_commit() -> None:
    path = _fault_file(contract.FAULT_SLOW_COMMIT)
    if path:
        with open(path) as f:
            time.sleep(float(f.read().strip() or 0))


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Where and how often to checkpoint; each field defaults from its KUBETRAIN_* variable."""

    uri: str
    run_id: str
    every_steps: int = contract.DEFAULT_CHECKPOINT_EVERY_STEPS
    every_seconds: float = 0.0
    keep: int = contract.DEFAULT_CHECKPOINT_KEEP
    max_failures: int = 3
    #: Seconds restore retries a step it could not read for a storage error before giving up (exit INFRA).
    storage_timeout: float = contract.DEFAULT_STORAGE_TIMEOUT
    #: When the run has no checkpoint yet: a run folder URI, or WARM_START_LATEST (see restore()).
    warm_start_from: str | None = None
    warm_start_optimizer: bool = False

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise CheckpointError(f"every_steps must be >= 0 (0 disables), got {self.every_steps}")
        if self.every_seconds < 0:
            raise CheckpointError(f"every_seconds must be >= 0 (0 disables), got {self.every_seconds}")
        if self.keep < 1:
            raise CheckpointError(f"keep must be >= 1, got {self.keep}")
        if not self.storage_timeout > 0:
            raise CheckpointError(f"storage_timeout must be > 0 seconds, got {self.storage_timeout}")
        if not self.run_id or "/" in self.run_id:
            raise CheckpointError(f"run id must be a non-empty name without '/', got {self.run_id!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> "CheckpointConfig":
        def pick(key: str, env_name: str, conv, default):
            if overrides.get(key) is not None:
                return overrides[key]
            raw = env.get(env_name)
            return conv(raw) if raw not in (None, "") else default

        return cls(
            uri=pick("uri", contract.ENV_CHECKPOINT_URI, str, contract.DEFAULT_CHECKPOINT_DIR),
            run_id=pick("run_id", contract.ENV_RUN_ID, str, "default"),
            every_steps=pick("every_steps", contract.ENV_CHECKPOINT_EVERY_STEPS, int,
                             contract.DEFAULT_CHECKPOINT_EVERY_STEPS),
            every_seconds=pick("every_seconds", contract.ENV_CHECKPOINT_EVERY_SECONDS, float, 0.0),
            keep=pick("keep", contract.ENV_CHECKPOINT_KEEP, int, contract.DEFAULT_CHECKPOINT_KEEP),
            storage_timeout=pick("storage_timeout", contract.ENV_STORAGE_TIMEOUT, float,
                                 contract.DEFAULT_STORAGE_TIMEOUT),
            warm_start_from=pick("warm_start_from", contract.ENV_WARM_START_FROM, str, None),
            warm_start_optimizer=pick("warm_start_optimizer", contract.ENV_WARM_START_OPTIMIZER,
                                      lambda v: v == "1", False),
            **({"max_failures": overrides["max_failures"]} if overrides.get("max_failures") else {}),
        )


@dataclasses.dataclass
class _SaveJob:
    step: int
    replicated: Any | None  # rank 0 only
    sharded: Any | None
    per_rank: Any
    started: float


def _load_own(path: str) -> Any:
    # Our own, checksum-verified file: it holds RNG tuples and user state, not only tensors.
    return torch.load(path, map_location="cpu", weights_only=False)


@dataclasses.dataclass
class _Loaded:
    step: int
    replicated: Any | None
    per_rank: Any | None
    dcp_dir: str | None
    #: Where local rank 0 handed the replicated file to the node's other ranks (handoff.py).
    shared: str | None = None
    #: The ranks that saved it, when not this run's (trainer/resize.py).
    saved_world_size: int | None = None


class Checkpointer:
    """Checkpoints for a training loop; see the module docstring."""

    def __init__(self, model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                 scheduler: Any | None = None, *, extra: Mapping[str, Stateful] | None = None,
                 per_rank: Mapping[str, Stateful] | None = None, uri: str | None = None,
                 run_id: str | None = None, every_steps: int | None = None, every_seconds: float | None = None,
                 keep: int | None = None, async_upload: bool = True, max_failures: int | None = None,
                 warm_start_from: str | None = None, warm_start_optimizer: bool | None = None,
                 storage_timeout: float | None = None) -> None:
        self.config = CheckpointConfig.from_env(os.environ, uri=uri, run_id=run_id, every_steps=every_steps,
                                                every_seconds=every_seconds, keep=keep, max_failures=max_failures,
                                                storage_timeout=storage_timeout,
                                                warm_start_from=warm_start_from,
                                                warm_start_optimizer=warm_start_optimizer)
        if int(os.environ.get("WORLD_SIZE") or 1) > 1 and not dist.initialized():
            raise CheckpointError("WORLD_SIZE > 1 but torch.distributed is not initialized: call "
                                  "torch.distributed.init_process_group() before creating the Checkpointer, or every "
                                  "rank would save as rank 0")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.extra = dict(extra or {})
        self.per_rank = dict(per_rank or {})
        self.async_upload = async_upload
        # get_state_dict's first call imports torch._dynamo (0.35-0.5 s here): pay
        # that now, not inside the first save, which may be a preemption's.
        import torch._dynamo  # noqa: F401

        self.storage: Storage = open_storage(self.config.uri)
        self.run_uri = join(self.storage.uri, self.config.run_id)
        self.rank, self.world_size = dist.rank(), dist.world_size()
        # Two gloo groups: the per-step stop check runs on the training thread,
        # the commit on the upload thread; one group must never serve both.
        self._control_group = dist.new_gloo_group(COORD_TIMEOUT_S)
        self._commit_group = dist.new_gloo_group(COORD_TIMEOUT_S)
        self._control_dir = os.environ.get(contract.ENV_CONTROL_DIR) or None
        self._signalled = threading.Event()
        self._install_signal_handlers()
        self._thread: threading.Thread | None = None
        #: Allocates the snapshot buffers once training runs (see _preallocate); joined before a snapshot.
        self._allocator: threading.Thread | None = None
        #: The stop/save agreement started at the last agreeing step_end, read at the next (see step_end).
        self._agreement: dist.PendingMax | None = None
        #: step_end calls so far, and the call at which the next agreement starts: the same on every
        #: rank, as every rank makes the same calls and reads the same agreed strides.
        self._step_ends = 0
        self._next_agreement = 0
        self._last_step_end: float | None = None
        self._slowest_step = 0.0  # since the last agreement started, on this rank
        self._pruner: threading.Thread | None = None
        #: Host buffers of the last snapshot, reused by the next (see state.snapshot).
        self._buffers: dict[str, dict] = {}
        self._failures = 0
        self._last_error: str | None = None
        #: Set on every rank when a save met a configuration error (StorageConfigError): no retry helps.
        self._permanent: str | None = None
        #: The step whose upload runs in the background, and since when (for the wait's log line).
        self._inflight: tuple[int, float] | None = None
        self._last_save_time = time.monotonic()
        self._created_at = time.time()
        self._last_heartbeat = 0.0
        #: The newest step this run committed or restored.
        self.last_committed: int | None = None
        #: The step restore() resumed from, or None.
        self.restored_step: int | None = None

    # --- public API ---------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        """Whether this rank has seen a stop request (SIGTERM or the supervisor's notice)."""
        return self._signalled.is_set() or (
            self._control_dir is not None and os.path.exists(os.path.join(self._control_dir, contract.CONTROL_STOP)))

    def restore(self) -> int:
        """Load the newest checkpoint that verifies on every rank; return its step (0 if none).

        Restore never goes backwards on a storage error: a step is passed over for an older
        one only when it is verified unusable (no manifest, a size or sha256 mismatch, a
        missing file). One that cannot be read is read again with backoff for
        `storage_timeout` seconds; then the run raises StorageError (exit INFRA, retried
        later) with `latest` untouched. See `_restore_first`.

        A run with no usable checkpoint of its own and a `warm_start_from` loads that
        run's newest committed model weights (and optimizer only if asked) and returns 0:
        a new run on new data, not a resume, so its scheduler, RNG and data position start fresh.
        """
        self._heartbeat(0, force=True)
        if self.rank == 0:
            self._sweep_stale_uploads()
        wait = _StorageWait(self.config.storage_timeout)
        token = dist.broadcast_object(uuid.uuid4().hex[:12] if self.rank == 0 else "", self._control_group)
        candidates = self._agreed_listing(lambda: self._candidates(self.run_uri, self.storage), wait,
                                          f"the checkpoints listed in {self.run_uri}")
        found = self._restore_first(self.run_uri, self.storage, candidates, wait, per_rank=True,
                                    shared=self._handoff_prefix(token, self.storage))
        if found is not None:
            self._apply(found)
            self.last_committed = self.restored_step = found.step
            self._last_save_time = time.monotonic()
            if dist.local_rank() == 0:  # in every pod's log: `launch status`/`chaos` read it per pod
                log.info("restored %s from %s; %s", contract.step_dir_name(found.step), self.run_uri,
                         contract.LOG_RESUMED.format(step=found.step))
            self._heartbeat(found.step, force=True)
            return found.step
        if self.config.warm_start_from:
            self._warm_start(wait, token)
            return 0
        if self.rank == 0:
            log.info("no usable checkpoint under %s; starting from step 0", self.run_uri)
        return 0

    def _sweep_stale_uploads(self) -> None:
        """Rank 0: abort multipart uploads an earlier attempt of this run left behind (a SIGKILL mid-upload).

        Only those begun before this Checkpointer was made: no save of this attempt has started yet,
        and the supervisor left no rank of an earlier attempt running on this node.
        """
        try:
            aborted = self.storage.abort_stale_uploads(self.run_uri, self._created_at)
        except Exception as e:  # a sweep only saves money; the restore must not wait for it
            log.warning("could not sweep incomplete uploads under %s: %s", self.run_uri, one_line(str(e)))
            return
        if aborted:
            log.warning("aborted %d incomplete upload(s) an earlier attempt left under %s: %s", len(aborted),
                        self.run_uri, ", ".join(sorted(set(aborted))))

    @staticmethod
    def _candidates(run_uri: str, storage: Storage) -> list[int]:
        """Rank 0: the committed-looking steps of a run folder, newest first (`latest` first of all)."""
        latest = layout.parse_latest(storage.read_small(join(run_uri, contract.LATEST_NAME)))
        return layout.restore_candidates(latest, layout.steps_in_listing(storage.list_names(run_uri)))

    def _agreed_listing(self, list_fn: Any, wait: "_StorageWait", what: str) -> Any:
        """`list_fn()` on rank 0, the same answer on every rank; retried like a step's read.

        Rank 0 alone decides whether to retry or give up and broadcasts it, so the ranks
        cannot disagree about the deadline.
        """
        while True:
            answer: tuple = ("ok", None)
            if self.rank == 0:
                try:
                    answer = ("ok", list_fn())
                except StorageConfigError as e:
                    answer = ("permanent", str(e))
                except (StorageError, OSError) as e:  # nothing learned about the checkpoints: ask again
                    wait.start()
                    answer = ("transient", f"{type(e).__name__}: {one_line(str(e))}", wait.expired(),
                              wait.next_delay())
            answer = dist.broadcast_object(answer, self._control_group)
            if answer[0] == "ok":
                wait.reset()
                return answer[1]
            if answer[0] == "permanent":
                raise StorageConfigError(answer[1])
            _, reason, expired, delay = answer
            if expired:
                raise StorageError(wait.give_up_message(what, reason))
            if dist.all_reduce_max([int(self.stop_requested)], self._control_group)[0]:
                self._stop_unrestored(what)
            if self.rank == 0:
                log.warning("%s", wait.retry_message(what, reason, delay))
            time.sleep(delay)

    def _restore_first(self, run_uri: str, storage: Storage, steps: list[int], wait: "_StorageWait", *,
                       per_rank: bool, shared: str | None) -> "_Loaded | None":
        """The one restore policy (own checkpoints and warm starts): the first of `steps` that every
        rank loads and verifies, loaded; None when every one is verified unusable.

        Per step the ranks agree on the worst verdict (_Verdict): a verified-unusable step is
        skipped for the next; a storage error on any rank reads the same step again after a
        backoff, until `wait` expires (StorageError, exit INFRA); a configuration error stops
        at once (StorageConfigError, exit 2).
        """
        i = attempt = 0
        while i < len(steps):
            step = steps[i]
            # A fresh handoff name per attempt: the failure marker of the last one stays until _discard.
            loaded, failure = self._try_load(step, run_uri=run_uri, storage=storage, per_rank=per_rank,
                                             shared=f"{shared}a{attempt}-" if shared else None)
            mine = failure[0] if failure is not None else _Verdict.OK
            agreed, expired, stop = dist.all_reduce_max([int(mine), int(wait.expired()), int(self.stop_requested)],
                                                        self._control_group)
            agreed = _Verdict(agreed)
            if agreed is _Verdict.OK:
                wait.reset()
                return loaded
            self._discard(loaded)
            if failure is not None:
                log.warning("rank %d: checkpoint %s/%s: %s (%s)", self.rank, run_uri, contract.step_dir_name(step),
                            failure[1], failure[0].describe())
            reason = self._reason_of(agreed, mine, failure[1] if failure is not None else "")
            if agreed is _Verdict.PERMANENT:
                raise StorageConfigError(reason)
            if agreed is _Verdict.UNUSABLE:
                wait.reset()
                i, attempt = i + 1, 0
                if self.rank == 0:
                    nxt = steps[i] if i < len(steps) else None
                    log.warning("checkpoint %s is verified unusable (%s); falling back to %s",
                                contract.step_dir_name(step), reason,
                                contract.step_dir_name(nxt) if nxt is not None else "no checkpoint of this run")
                continue
            what = f"checkpoint {contract.step_dir_name(step)} of {run_uri}"
            if expired:
                raise StorageError(wait.give_up_message(what, reason))
            if stop:
                self._stop_unrestored(what)
            wait.start()
            delay = wait.next_delay()
            if self.rank == 0:
                log.warning("%s", wait.retry_message(what, reason, delay))
            time.sleep(delay)
            attempt += 1
        return None

    def _stop_unrestored(self, what: str) -> None:
        """A stop request while restore waits out a storage error: there is nothing to save, so leave now
        rather than at the grace deadline. Exit 143 even under the supervisor (not 0, as after a committed
        stop): an exit 0 of every rank reads as "finished", and there is no peer still saving to wait for."""
        if self.rank == 0:
            log.warning("stop requested while restore waited to read %s; exiting without a checkpoint "
                        "(`latest` untouched)", what)
        raise SystemExit(int(contract.ExitCode.PREEMPTED))

    def _reason_of(self, agreed: "_Verdict", mine: "_Verdict", reason: str) -> str:
        """The reason of the lowest rank whose verdict is `agreed`, on every rank (two collectives,
        only on a failure): each rank logs its own, but a StorageError or the exit names one."""
        n = self.world_size
        top = dist.all_reduce_max([n - self.rank if mine is agreed else 0], self._control_group)[0]
        return dist.broadcast_object(f"rank {self.rank}: {reason}" if mine is agreed else "", self._control_group,
                                     src=n - top) if top else reason

    def _warm_start_runs(self) -> list[str]:
        """Rank 0: run folders to warm-start from, best first."""
        source = self.config.warm_start_from
        assert source
        if source != contract.WARM_START_LATEST:
            return [source.rstrip("/")]
        mine = contract.parse_scheduled_run_name(self.config.run_id)
        if mine is None:
            raise CheckpointError(f"warm start from {source!r} needs a scheduled run id (SCHEDULE-MINUTES), "
                                  f"got {self.config.run_id!r}")
        earlier = []
        for name in self.storage.list_names(self.storage.uri):
            other = contract.parse_scheduled_run_name(name.rstrip("/").rsplit("/", 1)[-1])
            if other is not None and other[0] == mine[0] and other[1] < mine[1]:
                earlier.append(other[1])
        # Newest first: a previous run that never committed a step is passed over for the one before it.
        return [join(self.storage.uri, f"{mine[0]}-{m}") for m in sorted(set(earlier), reverse=True)]

    def _warm_start(self, wait: "_StorageWait", token: str) -> None:
        """Load the newest committed step of the first warm-start run that has one, on every rank alike."""

        def runs_with_steps() -> list[tuple[str, list[int]]]:
            found = []
            for run_uri in self._warm_start_runs():
                steps = self._candidates(run_uri, open_storage(run_uri))
                if steps:
                    found.append((run_uri, steps))
            return found

        runs = self._agreed_listing(runs_with_steps, wait, f"the runs to warm-start from ({self.config.warm_start_from})")
        for n, (run_uri, steps) in enumerate(runs):
            storage = open_storage(run_uri)
            loaded = self._restore_first(run_uri, storage, steps, wait, per_rank=False,
                                         shared=self._handoff_prefix(f"{token}-{n}", storage))
            if loaded is not None:
                self._apply(loaded, warm=True)
                if self.rank == 0:
                    log.info("%s (%s); starting from step 0", contract.LOG_WARM_START.format(uri=run_uri, step=loaded.step),
                             "weights and optimizer" if self.config.warm_start_optimizer else
                             "weights only, a fresh optimizer")
                return
        if self.config.warm_start_from != contract.WARM_START_LATEST:
            # Asked for a particular run: starting from scratch instead would not be what was asked.
            raise CheckpointError(f"warm start: no usable committed checkpoint under {self.config.warm_start_from}")
        if self.rank == 0:
            log.info("warm start: no earlier run of this schedule under %s has a committed checkpoint; "
                     "starting from scratch", self.storage.uri)

    def step_end(self, step: int) -> None:
        """Call after each optimizer step with the number of steps completed.

        Saves when a cadence is due. When a stop was requested on any rank (seen by
        the next agreement to start, read by the one after it: a few steps when
        steps are short, see AGREE_WITHIN_S), all ranks save this step
        synchronously, commit it, and leave the process (exit 0 under the
        supervisor, which then exits 143; 143 otherwise).
        """
        now = time.monotonic()
        if self._last_step_end is not None:
            self._slowest_step = max(self._slowest_step, now - self._last_step_end)
        self._last_step_end = now
        self._heartbeat(step)
        if self._allocator is None:
            self._preallocate(step)
        c = self.config
        stop = due = 0
        if self._step_ends >= self._next_agreement:
            time_due = c.every_seconds > 0 and now - self._last_save_time >= c.every_seconds
            # The ranks agree on stopping one agreement late: the max started here is read at the
            # next one, so its latency hides behind training steps. Waiting for it here cost 12 % of
            # a 10 ms step (bench M7, 2 gloo ranks). It also carries each rank's proposed stride, and
            # all ranks read the same max at the same step, so they keep agreeing at the same steps.
            proposal = agreement_stride(self._slowest_step)
            self._slowest_step = 0.0
            agreed, self._agreement = self._agreement, dist.PendingMax(
                [int(self.stop_requested), int(time_due), proposal], self._control_group)
            stop, due, stride = agreed.result() if agreed is not None else (0, 0, 1)
            self._next_agreement = self._step_ends + stride
        self._step_ends += 1
        if stop:
            self._stop(step)
        if due or (c.every_steps > 0 and step % c.every_steps == 0):
            self.save(step)

    def save(self, step: int, *, blocking: bool = False) -> None:
        """Snapshot now; write and commit in the background unless `blocking`."""
        if self._thread is not None and self._thread.is_alive() and self._inflight and self.rank == 0:
            # Training stalls here for as long as the upload takes: say why, or a slow store looks like a hang.
            prev, since = self._inflight
            log.warning("checkpoint %s waits for the upload of %s to %s (in flight for %.1fs) before its snapshot",
                        contract.step_dir_name(step), contract.step_dir_name(prev), self.run_uri,
                        time.monotonic() - since)
        self.wait()
        # After wait() every rank has the outcome of the same saves, so all raise together.
        self._raise_if_failing()
        job = self._stage(step)
        self._last_save_time = time.monotonic()
        if blocking or not self.async_upload:
            self._run(job)
            if self._permanent is not None:
                raise StorageConfigError(self._permanent)
            if self._last_error is not None and self._failures:
                raise CheckpointError(self._last_error)
            return
        self._inflight = (step, job.started)
        self._thread = threading.Thread(target=self._run, args=(job,), name=f"kubetrain-save-{step}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the save in flight, if any, has committed or failed."""
        if self._thread is not None:
            self._thread.join()  # may start a pruner: join that after
            self._thread = None
        if self._pruner is not None:
            self._pruner.join()
            self._pruner = None

    def close(self, final_step: int | None = None) -> None:
        """Wait for uploads; with `final_step`, save it synchronously first (unless already committed)."""
        self._drain_agreement()
        self.wait()
        if final_step is not None and self.last_committed != final_step:
            self.save(final_step, blocking=True)
            self.wait()
        elif self._permanent is not None:
            raise StorageConfigError(self._permanent)
        elif self._failures:
            raise CheckpointError(self._last_error or "the last checkpoint failed")

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wait()

    # --- saving ---------------------------------------------------------------

    def _model_optim_state(self) -> tuple[Any, Any]:
        if self.model is None:
            return None, None
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        if self.optimizer is None:
            return get_model_state_dict(self.model), None
        return get_state_dict(self.model, self.optimizer)

    def _to_snapshot(self, step: int) -> tuple[Any, Any, dict[str, Any]]:
        """(replicated, sharded, per-rank) state of this rank: what a save copies to host memory."""
        msd, osd = self._model_optim_state()
        sharded = st.is_sharded(msd) or st.is_sharded(osd)
        replicated = None
        if self.rank == 0:
            replicated = {"step": step, "extra": {k: v.state_dict() for k, v in self.extra.items()}}
            if self.scheduler is not None:
                replicated["scheduler"] = self.scheduler.state_dict()
            if not sharded:
                replicated["model"], replicated["optimizer"] = msd, osd
        per_rank = {"step": step, "rng": st.rng_state(), "state": {k: v.state_dict() for k, v in self.per_rank.items()}}
        return replicated, {"model": msd, "optimizer": osd} if sharded else None, per_rank

    def _preallocate(self, step: int) -> None:
        """Allocate the snapshot buffers on a background thread after the first step.

        After it, not in restore(): a lazily built optimizer state (Adam's) exists
        only once a step ran. The shapes are read here, on the training thread; the
        thread only allocates, so it never races the optimizer.
        """
        replicated, sharded, _ = self._to_snapshot(step)
        b = self._buffers
        specs = [(st.buffer_specs(replicated), b.setdefault("replicated", {}))]
        if sharded is not None:
            specs.append((st.buffer_specs(sharded), b.setdefault("sharded", {})))

        def run() -> None:
            try:
                for spec, buffers in specs:
                    st.allocate(spec, buffers)
            except Exception as e:  # noqa: BLE001 - the first snapshot allocates what is missing
                log.warning("rank %d: could not preallocate checkpoint buffers (%s); the first save will", self.rank,
                            one_line(str(e)))

        self._allocator = threading.Thread(target=run, name="kubetrain-prealloc", daemon=True)
        self._allocator.start()

    def _stage(self, step: int) -> _SaveJob:
        t0 = time.monotonic()
        if self._allocator is not None:
            self._allocator.join()
        replicated, sharded, per_rank = self._to_snapshot(step)
        b = self._buffers
        job = _SaveJob(step=step, replicated=st.snapshot(replicated, b.setdefault("replicated", {})),
                       sharded=st.snapshot(sharded, b.setdefault("sharded", {})) if sharded is not None else None,
                       per_rank=st.snapshot(per_rank), started=t0)
        log.debug("rank %d: snapshot of step %d took %.3fs", self.rank, step, time.monotonic() - t0)
        return job

    def _run(self, job: _SaveJob) -> None:
        """Write this rank's files, then rank 0 commits; every rank learns the outcome."""
        step_uri = join(self.run_uri, contract.step_dir_name(job.step))
        try:
            _injected_outage()
            files: dict[str, FileInfo] = {}
            if job.replicated is not None:
                files[layout.REPLICATED_FILE] = self.storage.write_file(
                    join(step_uri, layout.REPLICATED_FILE), lambda f: torch.save(job.replicated, f))
            files[rank_file(self.rank)] = self.storage.write_file(
                join(step_uri, rank_file(self.rank)), lambda f: torch.save(job.per_rank, f))
            if job.sharded is not None:
                files.update(self._write_sharded(step_uri, job.sharded))
            mine: tuple[str, Any] = ("ok", files)
        except StorageConfigError as e:  # the bucket or the credentials: no later save can succeed either
            mine = ("permanent", str(e))
        except Exception as e:  # reported through the commit outcome, never swallowed
            mine = ("error", f"rank {self.rank}: {type(e).__name__}: {e}")
        job.replicated = job.sharded = job.per_rank = None  # free the snapshot before the commit
        gathered = dist.gather_objects(mine, self._commit_group)
        outcome: tuple[str, str] = ("ok", "")
        if self.rank == 0:
            assert gathered is not None
            permanent = [msg for kind, msg in gathered if kind == "permanent"]
            errors = [msg for kind, msg in gathered if kind == "error"]
            outcome = (("permanent", permanent[0]) if permanent else ("error", "; ".join(errors)) if errors
                       else self._commit(job.step, gathered))
        outcome = dist.broadcast_object(outcome, self._commit_group)
        if outcome[0] == "ok":
            self._failures, self._last_error = 0, None
            self.last_committed = job.step
            if self.rank == 0:
                log.info("checkpoint %s committed in %.2fs", contract.step_dir_name(job.step),
                         time.monotonic() - job.started)
                self._tell_committed(job.step)
        else:
            self._failures += 1
            if outcome[0] == "permanent":
                self._permanent = outcome[1]
            # The run's folder, not the root: several runs share a root, and this is the one whose `latest` stayed.
            self._last_error = (f"checkpoint {contract.step_dir_name(job.step)} failed, {self.run_uri}/"
                                f"{contract.LATEST_NAME} still points at step {self.last_committed}: {outcome[1]}")
            if self.rank == 0:
                log.error("%s (%d in a row; training stops after %d)", self._last_error, self._failures,
                          self.config.max_failures)

    def _commit(self, step: int, gathered: list[tuple[str, Any]]) -> tuple[str, str]:
        """Rank 0: manifest after every file, `latest` after the manifest, then prune."""
        files: dict[str, FileInfo] = {}
        for _, f in gathered:
            files.update(f)
        step_uri = join(self.run_uri, contract.step_dir_name(step))
        try:
            _injected_slow_commit()
            manifest = layout.Manifest(step=step, world_size=self.world_size,
                                       kind="sharded" if any(k.startswith(layout.SHARDED_DIR + "/") for k in files)
                                       else "replicated", files=files, created=time.time())
            self.storage.write_small(join(step_uri, contract.MANIFEST_NAME), layout.manifest_to_bytes(manifest))
            self.storage.write_small(join(self.run_uri, contract.LATEST_NAME), f"{step}\n".encode())
        except StorageConfigError as e:
            return ("permanent", str(e))
        except Exception as e:
            return ("error", f"commit: {type(e).__name__}: {e}")
        # Pruning is not part of the commit: it runs beside training and the next
        # save (or close) waits for it, so old steps go only after a newer one committed.
        self._pruner = threading.Thread(target=self._prune_quietly, args=(step,), name="kubetrain-prune", daemon=True)
        self._pruner.start()
        return ("ok", "")

    def _prune_quietly(self, newest: int) -> None:
        try:
            self._prune(newest)
        except Exception as e:  # a failed prune leaves extra folders, never a wrong checkpoint
            log.warning("pruning old checkpoints failed (will retry after the next commit): %s", e)

    def _prune(self, newest: int) -> None:
        all_steps = layout.steps_in_listing(self.storage.list_names(self.run_uri))
        committed = [s for s in all_steps if s == newest or self.storage.read_small(
            join(self.run_uri, contract.step_dir_name(s), contract.MANIFEST_NAME)) is not None]
        for s in layout.steps_to_prune(committed, all_steps, newest=newest, keep=self.config.keep):
            step_uri = join(self.run_uri, contract.step_dir_name(s))
            # Manifest first: a prune cut short must leave an uncommitted folder, not a committed hole.
            self.storage.remove(join(step_uri, contract.MANIFEST_NAME))
            self.storage.remove_tree(step_uri)

    def _write_sharded(self, step_uri: str, state: Any) -> dict[str, FileInfo]:
        """Every rank's shards through torch.distributed.checkpoint, staged locally, then uploaded."""
        import torch.distributed.checkpoint as dcp

        local = tempfile.mkdtemp(dir=spool_dir(), prefix=f"dcp-save-r{self.rank}-")
        try:
            dcp.save(state, storage_writer=dcp.FileSystemWriter(local, sync_files=False),
                     process_group=self._commit_group)
            out = {}
            for name in sorted(os.listdir(local)):
                src = os.path.join(local, name)

                def copy(f, src=src):
                    with open(src, "rb") as r:
                        shutil.copyfileobj(r, f, 8 << 20)

                out[f"{layout.SHARDED_DIR}/{name}"] = self.storage.write_file(
                    join(step_uri, layout.SHARDED_DIR, name), copy)
            return out
        finally:
            shutil.rmtree(local, ignore_errors=True)

    # --- restoring ------------------------------------------------------------

    @staticmethod
    def _handoff_prefix(token: str, storage: Storage) -> str | None:
        """Where this node's ranks share one download (handoff.py); None where there is nothing to share."""
        return None if storage.is_local else handoff.node_prefix(token, os.environ)

    def _try_load(self, step: int, *, run_uri: str | None = None, storage: Storage | None = None,
                  per_rank: bool = True, shared: str | None = None
                  ) -> tuple[_Loaded, "tuple[_Verdict, str] | None"]:
        """Fetch and verify this rank's files of `step`; (loaded, None) or (partial, (verdict, reason)).

        Another run's folder for a warm start: `run_uri` and its `storage`, without per-rank state.
        `shared`: the node's handoff prefix; local rank 0 then fetches the replicated file for all.
        """
        loaded = _Loaded(step=step, replicated=None, per_rank=None, dcp_dir=None,
                         shared=f"{shared}{contract.step_dir_name(step)}-{layout.REPLICATED_FILE}" if shared else None)
        failure = self._load_into(loaded, join(run_uri or self.run_uri, contract.step_dir_name(step)),
                                  storage or self.storage, per_rank)
        if failure is not None and loaded.shared is not None and dist.local_rank() == 0:
            # The node's other ranks may be waiting for it; they must judge the step as this rank did.
            handoff.publish_failure(loaded.shared, f"{failure[0].name}\n{failure[1]}")
        return loaded, failure

    def _load_into(self, loaded: _Loaded, step_uri: str, storage: Storage, per_rank: bool
                   ) -> "tuple[_Verdict, str] | None":
        """_try_load's work: fill `loaded`; None, or what this rank found wrong and why."""
        step = loaded.step
        unusable = _Verdict.UNUSABLE
        try:
            raw = storage.read_small(join(step_uri, contract.MANIFEST_NAME))
            if raw is None:
                return unusable, "no manifest.json (the save never committed)"
            try:
                manifest = layout.manifest_from_bytes(raw, expect_step=step)
            except (ValueError, KeyError, TypeError) as e:
                return unusable, f"manifest.json is invalid: {e}"
            if layout.REPLICATED_FILE in manifest.files:
                loaded.replicated = self._fetch_replicated(step_uri, manifest.files[layout.REPLICATED_FILE], storage,
                                                           loaded.shared)
            mine = rank_file(self.rank)
            if per_rank and manifest.world_size != self.world_size:
                loaded.saved_world_size = manifest.world_size
            if not per_rank:
                pass  # a warm start takes no RNG streams or data position from another run
            elif mine in manifest.files:
                loaded.per_rank = self._fetch_verified(step_uri, mine, manifest.files[mine], storage=storage)
            elif manifest.world_size != self.world_size:
                pass  # a rank that did not exist then: _apply seeds it (trainer/resize.py)
            else:
                return unusable, f"manifest.json lists no {mine}"
            if manifest.kind == "sharded":
                loaded.dcp_dir = tempfile.mkdtemp(dir=spool_dir(), prefix=f"dcp-load-r{self.rank}-")
                for name, info in manifest.files.items():
                    if name.startswith(layout.SHARDED_DIR + "/"):
                        self._fetch_verified(step_uri, name, info, storage=storage,
                                             copy_to=os.path.join(loaded.dcp_dir, name.split("/", 1)[1]))
            return None
        except _Corrupt as e:
            return unusable, str(e)
        except handoff.HandoffFailed as e:
            verdict, _, reason = str(e).partition("\n")
            if verdict not in _Verdict.__members__:  # the wait itself timed out: nothing is known of the step
                verdict, reason = _Verdict.TRANSIENT.name, str(e)
            return _Verdict[verdict], f"local rank 0 could not fetch {layout.REPLICATED_FILE}: {reason}"
        except FileNotFoundError as e:
            return unusable, f"{e} is missing"
        except Exception as e:
            return read_failure_verdict(e), f"{type(e).__name__}: {one_line(str(e))}"

    def _fetch_replicated(self, step_uri: str, expected: FileInfo, storage: Storage, shared: str | None) -> Any:
        """The replicated state: the supervisor's prefetched copy, fetched by this rank, or through the
        node's handoff at `shared`."""
        ready = prefetch.prefetched(expected.sha256, os.environ, COORD_TIMEOUT_S)
        if ready is not None:
            return _load_own(ready)
        if shared is None:
            return self._fetch_verified(step_uri, layout.REPLICATED_FILE, expected, storage=storage)
        if dist.local_rank() != 0:
            return _load_own(handoff.wait_for(shared, COORD_TIMEOUT_S))
        self._fetch_verified(step_uri, layout.REPLICATED_FILE, expected, storage=storage,
                             publish=lambda local: handoff.publish(local, shared))
        return _load_own(shared)

    def _fetch_verified(self, step_uri: str, name: str, expected: FileInfo, copy_to: str | None = None,
                        storage: Storage | None = None, publish: Any = None) -> Any:
        """Fetch `name`, check it against the manifest; then copy it to `copy_to`, hand it to
        `publish(local_path)`, or (neither given) return it loaded."""
        with (storage or self.storage).fetch(join(step_uri, name)) as local:
            got = file_info(local)
            if got.size != expected.size:
                raise _Corrupt(f"{name} has {got.size} bytes, the manifest says {expected.size} (truncated?)")
            if got.sha256 != expected.sha256:
                raise _Corrupt(f"{name} fails its sha256 check (corrupt)")
            if copy_to is not None:
                shutil.copyfile(local, copy_to)
                return None
            if publish is not None:
                publish(local)
                return None
            return _load_own(local)

    def _apply(self, loaded: _Loaded, *, warm: bool = False) -> None:
        """Load `loaded` into the live objects.

        `warm` (a warm start): the model, and the optimizer only with warm_start_optimizer;
        never the LR scheduler, extra or per-rank state, which belong to the run that saved them.
        """
        weights_only = warm and not self.config.warm_start_optimizer
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        rep = loaded.replicated or {}
        if loaded.dcp_dir is not None and self.model is not None:
            import torch.distributed.checkpoint as dcp

            msd, osd = self._model_optim_state()
            target = {"model": msd} if weights_only else {"model": msd, "optimizer": osd}
            dcp.load(target, storage_reader=dcp.FileSystemReader(loaded.dcp_dir), process_group=self._control_group)
            msd, osd = target["model"], target.get("optimizer")
        else:
            msd, osd = rep.get("model"), None if weights_only else rep.get("optimizer")
        if self.model is not None and msd is not None:
            if self.optimizer is not None and osd is not None:
                set_state_dict(self.model, self.optimizer, model_state_dict=msd, optim_state_dict=osd)
            else:
                set_model_state_dict(self.model, msd)
        if warm:
            self._discard(loaded)
            return
        if self.scheduler is not None and "scheduler" in rep:
            self.scheduler.load_state_dict(rep["scheduler"])
        for k, v in self.extra.items():
            if k in rep.get("extra", {}):
                v.load_state_dict(rep["extra"][k])
        if loaded.per_rank is not None:
            for k, v in self.per_rank.items():
                if k in loaded.per_rank["state"]:
                    v.load_state_dict(loaded.per_rank["state"][k])
            st.set_rng_state(loaded.per_rank["rng"])
        if loaded.saved_world_size is not None:
            resize.after_restore(self.rank, self.world_size, loaded.saved_world_size, loaded.step,
                                 restored_rng=loaded.per_rank is not None, extra=self.extra, per_rank=self.per_rank)
        self._discard(loaded)

    @staticmethod
    def _discard(loaded: _Loaded | None) -> None:
        """Remove what loading `loaded` left on local disk. Called after the ranks' all_true,
        so every local rank is done reading the handoff file."""
        if loaded is None:
            return
        if loaded.dcp_dir is not None:
            shutil.rmtree(loaded.dcp_dir, ignore_errors=True)
        if loaded.shared is not None and dist.local_rank() == 0:
            handoff.remove(loaded.shared)

    # --- stopping, signals, heartbeat -----------------------------------------

    def _drain_agreement(self) -> None:
        """Finish the collective step_end started, so the control group is free (every rank has one)."""
        if self._agreement is not None:
            self._agreement.result()
            self._agreement = None

    def _stop(self, step: int) -> None:
        self._drain_agreement()
        self.wait()
        if self.last_committed != step:
            if self.rank == 0:
                log.warning("stop requested: saving step %d before exiting", step)
            self.save(step, blocking=True)
        self.wait()
        # Every node's first rank tells its own supervisor: a pod that got no signal stops
        # too (the stop is agreed by all ranks) and must exit 143 to be restarted, not 0,
        # which the operator would count as that replica having finished.
        if dist.local_rank() == 0 and self._control_dir is not None:
            with open(os.path.join(self._control_dir, contract.CONTROL_PREEMPTED), "w") as f:
                json.dump({"step": step, "time": time.time()}, f)
        if self.rank == 0:
            log.warning("%s; exiting", contract.LOG_PREEMPTED.format(step=step))
        # Under the supervisor every rank exits 0 so torchrun does not tear down
        # ranks still finishing; the supervisor turns that into 143.
        raise SystemExit(0 if self._control_dir is not None else int(contract.ExitCode.PREEMPTED))

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, frame: Any) -> None:
            # Only set a flag: raising here could interrupt a collective or an upload.
            self._signalled.set()

        signal.signal(signal.SIGTERM, on_signal)

    def _tell_committed(self, step: int) -> None:
        """Global rank 0 tells its supervisor, which moves the restart ledger's progress mark."""
        if self._control_dir is None:
            return
        path = os.path.join(self._control_dir, contract.CONTROL_COMMITTED)
        try:
            with open(path + ".tmp", "w") as f:
                f.write(f"{step} {time.time()}\n")
            os.replace(path + ".tmp", path)
        except OSError as e:  # bookkeeping only: never fail a committed checkpoint for it
            log.warning("could not tell the supervisor about the commit of step %d: %s", step, e)

    def _heartbeat(self, step: int, force: bool = False) -> None:
        if self._control_dir is None:
            return
        now = time.time()
        if not force and now - self._last_heartbeat < HEARTBEAT_EVERY_S:
            return
        self._last_heartbeat = now
        path = os.path.join(self._control_dir, f"{contract.CONTROL_PROGRESS_PREFIX}{self.rank}")
        with open(path + ".tmp", "w") as f:
            f.write(f"{step} {now}\n")
        os.replace(path + ".tmp", path)

    def _raise_if_failing(self) -> None:
        if self._permanent is not None:
            raise StorageConfigError(self._permanent)
        if self._failures >= self.config.max_failures:
            raise CheckpointError(f"{self._failures} checkpoints in a row failed; the last: {self._last_error}")


class _Corrupt(Exception):
    """A file's bytes differ from its manifest: verified, not a read error."""


class _Verdict(enum.IntEnum):
    """One rank's judgement of a checkpoint step. The ranks agree on the largest: a step verified
    bad anywhere is bad, and a configuration error ends the restore whatever else was found."""

    OK = 0
    #: A storage error while reading: nothing is known about the step, so read it again later.
    TRANSIENT = 1
    #: Verified incomplete or corrupt (no manifest, size or sha256 mismatch, a missing file): skip it.
    UNUSABLE = 2
    #: The store refuses us (no such bucket, wrong credentials): no step can be read, stop (exit 2).
    PERMANENT = 3

    def describe(self) -> str:
        return {_Verdict.OK: "usable", _Verdict.TRANSIENT: "a storage error, the step is not known to be bad",
                _Verdict.UNUSABLE: "verified unusable", _Verdict.PERMANENT: "a configuration error"}[self]


def read_failure_verdict(exc: BaseException) -> _Verdict:
    """What an exception raised while reading a step says about the step.

    Only a fact about the bytes (a missing file, a checksum mismatch) condemns a step; a
    storage error says nothing about it, and falling back on one walked restores back
    through every retained step. A verified file that torch cannot load stays unusable.
    """
    if isinstance(exc, StorageConfigError):
        return _Verdict.PERMANENT
    if isinstance(exc, (_Corrupt, FileNotFoundError)):
        return _Verdict.UNUSABLE
    if isinstance(exc, (StorageError, OSError, TimeoutError, ConnectionError)):
        return _Verdict.TRANSIENT
    return _Verdict.UNUSABLE


class _StorageWait:
    """The deadline of one restore's retries: it starts at the first storage error and is
    reset whenever the store answers again, so it bounds one outage, not the whole restore."""

    #: Backoff between reads of the same step: doubling from FIRST_DELAY_S up to MAX_DELAY_S.
    FIRST_DELAY_S = 1.0
    MAX_DELAY_S = 15.0

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._deadline: float | None = None
        self._wall_deadline = 0.0
        self._delay = self.FIRST_DELAY_S

    def start(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.timeout_s
            self._wall_deadline = time.time() + self.timeout_s
            self._delay = self.FIRST_DELAY_S

    def reset(self) -> None:
        self._deadline = None

    def expired(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def next_delay(self) -> float:
        """Seconds to sleep before the next read, never past the deadline (+ a little, to see it pass)."""
        left = (self._deadline - time.monotonic()) if self._deadline is not None else self.timeout_s
        delay = max(0.05, min(self._delay, left + 0.05))
        self._delay = min(self._delay * 2, self.MAX_DELAY_S)
        return delay

    def retry_message(self, what: str, reason: str, delay: float) -> str:
        until = time.strftime("%H:%M:%S", time.localtime(self._wall_deadline))
        return (f"restore: cannot read {what} ({reason}); a storage error, not a bad checkpoint, so no fallback "
                f"to an older step: reading it again in {delay:.1f}s, until {until} (--storage-timeout "
                f"{self.timeout_s:.0f}s), then exit {int(contract.ExitCode.INFRA)} with `latest` untouched")

    def give_up_message(self, what: str, reason: str) -> str:
        return (f"restore: could not read {what} for {self.timeout_s:.0f}s (--storage-timeout) of storage "
                f"errors; the last: {reason}. `latest` is untouched; exiting for a later retry")
