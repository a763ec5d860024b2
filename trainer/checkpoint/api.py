"""`Checkpointer`: restore on start, save on a cadence and on preemption.

    ckpt = Checkpointer(model, optimizer, scheduler, per_rank={"sampler": sampler},
                        total_steps=total_steps)  # optional: progress and ETA in the TrainJob's status
    start = ckpt.restore()                  # 0, or the committed step to resume after
    for step in range(start, total_steps):
        train_one_step()
        ckpt.step_end(step + 1)             # saves when due; on preemption saves and exits
    ckpt.close(total_steps)                 # final, synchronous save

Every rank constructs the Checkpointer and calls every method in the same
order: saves, restores and the per-step stop check are collectives.

This class only wires the parts together: the stop agreement (agreement.py),
saving (saver.py), the one restore policy (restore.py, over loader.py), the
live objects (objects.py) and the notices for the supervisor
(notices.py). A save blocks training only while the state is copied; the
final save and the preemption save are synchronous. A failed upload leaves
`latest` untouched and raises `CheckpointError` after `max_failures` in a
row; under the supervisor that exits 201: retryable.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any, Mapping

import torch

from trainer import contract, dist
from trainer.checkpoint import node_copy
from trainer.checkpoint.agreement import StopAgreement
from trainer.checkpoint.config import COORD_TIMEOUT_S, CheckpointConfig, CheckpointRun
from trainer.checkpoint.notices import SupervisorNotices
from trainer.checkpoint.objects import Stateful, Trainables
from trainer.checkpoint.restore import Restorer
from trainer.checkpoint.saver import Saver
from trainer.checkpoint.sweep import abort_stale_uploads, remove_leftover_temps
from trainer.errors import CheckpointError, StorageConfigError
from trainer.storage import join, open_storage

log = logging.getLogger("kubetrain.checkpoint")


class Checkpointer:
    """Checkpoints for a training loop; see the module docstring."""

    def __init__(self, model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                 scheduler: Any | None = None, *, extra: Mapping[str, Stateful] | None = None,
                 per_rank: Mapping[str, Stateful] | None = None, uri: str | None = None,
                 run_id: str | None = None, every_steps: int | None = None, every_seconds: float | None = None,
                 keep: int | None = None, async_upload: bool = True, max_failures: int | None = None,
                 warm_start_from: str | None = None, warm_start_optimizer: bool | None = None,
                 storage_timeout: float | None = None, node_copy_max_bytes: int | None = None,
                 node_copy_dir: str | None = None, total_steps: int | None = None) -> None:
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise CheckpointError(f"total_steps must be a whole number >= 1, got {total_steps!r}")
        self.config = CheckpointConfig.from_env(os.environ, uri=uri, run_id=run_id, every_steps=every_steps,
                                                every_seconds=every_seconds, keep=keep, max_failures=max_failures,
                                                storage_timeout=storage_timeout,
                                                warm_start_from=warm_start_from,
                                                warm_start_optimizer=warm_start_optimizer,
                                                node_copy_max_bytes=node_copy_max_bytes, node_copy_dir=node_copy_dir)
        if int(os.environ.get("WORLD_SIZE") or 1) > 1 and not dist.initialized():
            raise CheckpointError("WORLD_SIZE > 1 but torch.distributed is not initialized: call "
                                  "torch.distributed.init_process_group() before creating the Checkpointer, or every "
                                  "rank would save as rank 0")
        self.objects = Trainables(model, optimizer, scheduler, extra or {}, per_rank or {})
        self.async_upload = async_upload
        # get_state_dict's first call imports torch._dynamo (0.35-0.5 s here): pay
        # that now, not inside the first save, which may be a preemption's.
        import torch._dynamo  # noqa: F401

        self.storage = open_storage(self.config.uri)
        self.run_uri = join(self.storage.uri, self.config.run_id)
        self.rank, self.world_size = dist.rank(), dist.world_size()
        # Under the supervisor the bound is set (its in-place restarts read the copy back); used directly,
        # a --node-copy-dir is what asks for one.
        node_bytes = contract.node_copy_bound(self.config.node_copy_max_bytes, read_back=bool(self.config.node_copy_dir))
        self.run = CheckpointRun(config=self.config, storage=self.storage, run_uri=self.run_uri, rank=self.rank,
                                 world_size=self.world_size, control_group=dist.new_gloo_group(COORD_TIMEOUT_S),
                                 commit_group=dist.new_gloo_group(COORD_TIMEOUT_S),
                                 node=node_copy.for_run(self.run_uri, base=self.config.node_copy_dir,
                                                        max_bytes=node_bytes, store_is_local=self.storage.is_local))
        control_dir = os.environ.get(contract.ENV_CONTROL_DIR) or None
        self._notices = SupervisorNotices(control_dir, self.rank)
        self._agreement = StopAgreement(self.run.control_group, control_dir)
        self._saver = Saver(self.run, self.objects, on_commit=self._notices.committed,
                            on_saved=lambda step, **m: self._notices.checkpoint_event("save", step, **m))
        if total_steps is not None and self.rank == 0:
            self._notices.total_steps(total_steps)
        self._created_at = time.time()
        #: The step restore() resumed from, or None.
        self.restored_step: int | None = None

    # --- public API ---------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        """Whether this rank has seen a stop request (SIGTERM or the supervisor's notice)."""
        return self._agreement.stop_requested

    @property
    def last_committed(self) -> int | None:
        """The newest step this run committed or restored."""
        return self._saver.last_committed

    def restore(self) -> int:
        """Load the newest checkpoint that verifies on every rank; return its step (0 if none).

        Restore takes the step `latest` names (a step is committed iff `latest` names it,
        trainer.contract), and an older one only when that one is verified unusable; a
        storage error is read again until `storage_timeout`, then exit INFRA (restore.py).

        A run with no usable checkpoint of its own and a `warm_start_from` loads that
        run's newest committed model weights (and optimizer only if asked) and returns 0:
        a new run on new data, not a resume, so its scheduler, RNG and data position start fresh.
        """
        began = time.monotonic()
        step, source = self._restore()
        self._notices.checkpoint_event("restore", step if source == "checkpoint" else None,
                                       seconds=time.monotonic() - began, source=source)
        return step

    def _restore(self) -> tuple[int, str]:
        """restore()'s work: the step, and where the state came from (checkpoint, warm-start, none)."""
        self._notices.heartbeat(0, force=True)
        if self.rank == 0:
            abort_stale_uploads(self.storage, self.run_uri, self._created_at, self.world_size)
            remove_leftover_temps(self.storage, self.run_uri)
        restorer = Restorer(self.run, lambda: self.stop_requested)
        token = dist.broadcast_object(uuid.uuid4().hex[:12] if self.rank == 0 else "", self.run.control_group)
        found = restorer.own(token)
        if found is not None:
            self.objects.apply(found, self.run.control_group, rank=self.rank, world_size=self.world_size)
            self._saver.last_committed = self.restored_step = found.step
            self._saver.last_save_time = time.monotonic()
            if dist.local_rank() == 0:  # in every pod's log: `launch status`/`chaos` read it per pod
                log.info("restored %s from %s; %s", contract.step_dir_name(found.step), self.run_uri,
                         contract.LOG_RESUMED.format(step=found.step))
            self._notices.heartbeat(found.step, force=True)
            return found.step, "checkpoint"
        if self.config.warm_start_from:
            warm = restorer.warm_start(token)
            if warm is not None:
                run_uri, loaded = warm
                self.objects.apply(loaded, self.run.control_group, rank=self.rank, world_size=self.world_size,
                                   warm=True, warm_optimizer=self.config.warm_start_optimizer)
                if self.rank == 0:
                    log.info("%s (%s); starting from step 0",
                             contract.LOG_WARM_START.format(uri=run_uri, step=loaded.step),
                             "weights and optimizer" if self.config.warm_start_optimizer else
                             "weights only, a fresh optimizer")
            elif self.rank == 0:
                log.info("warm start: no earlier run of this schedule under %s has a committed checkpoint; "
                         "starting from scratch", self.storage.uri)
            return 0, "warm-start" if warm is not None else "none"
        if self.rank == 0:
            log.info("no usable checkpoint under %s; starting from step 0", self.run_uri)
        return 0, "none"

    def step_end(self, step: int) -> None:
        """Call after each optimizer step with the number of steps completed.

        Saves when a cadence is due. When a stop was requested on any rank (seen by
        the next agreement to start, read by the one after it: a few steps when
        steps are short, see agreement.AGREE_WITHIN_S), all ranks save this step
        synchronously, commit it, and leave the process (exit 0 under the
        supervisor, which then exits 143; 143 otherwise).
        """
        now = time.monotonic()
        self._notices.heartbeat(step)
        if self._saver.allocator is None:
            self._saver.preallocate(step)
        c = self.config
        time_due = c.every_seconds > 0 and now - self._saver.last_save_time >= c.every_seconds
        stop, due = self._agreement.tick(now, time_due)
        if stop:
            self._stop(step)
        if due or (c.every_steps > 0 and step % c.every_steps == 0):
            self.save(step)

    def save(self, step: int, *, blocking: bool = False) -> None:
        """Snapshot now; write and commit in the background unless `blocking`."""
        self._saver.save(step, background=self.async_upload and not blocking)

    def wait(self) -> None:
        """Block until the save in flight, if any, has committed or failed."""
        self._saver.wait()

    def close(self, final_step: int | None = None) -> None:
        """Wait for uploads; with `final_step`, save it synchronously first (unless already committed)."""
        self._agreement.drain()
        self.wait()
        if final_step is not None:
            self._notices.heartbeat(final_step, force=True)  # the last step_end's may have been rate-limited
        if final_step is not None and self.last_committed != final_step:
            self.save(final_step, blocking=True)
            self.wait()
        elif self._saver.permanent is not None:
            raise StorageConfigError(self._saver.permanent)
        elif self._saver.failures:
            raise CheckpointError(self._saver.last_error or "the last checkpoint failed")

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wait()

    # --- stopping -------------------------------------------------------------

    def _stop(self, step: int) -> None:
        self._agreement.drain()
        self.wait()
        if self.last_committed != step:
            if self.rank == 0:
                log.warning("stop requested: saving step %d before exiting", step)
            self.save(step, blocking=True)
        self.wait()
        # Every node's first rank tells its own supervisor: a pod that got no signal stops
        # too (the stop is agreed by all ranks) and must exit 143 to be restarted, not 0,
        # which the operator would count as that replica having finished.
        if dist.local_rank() == 0:
            self._notices.preempted(step)
        if self.rank == 0:
            log.warning("%s; exiting", contract.LOG_PREEMPTED.format(step=step))
        # Under the supervisor every rank exits 0 so torchrun does not tear down
        # ranks still finishing; the supervisor turns that into 143.
        raise SystemExit(0 if self._notices.dir is not None else int(contract.ExitCode.PREEMPTED))
