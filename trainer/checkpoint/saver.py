"""Saving: snapshot on the training thread, then write, commit and prune on one background thread.

A save blocks training only while the state is copied off the live tensors
(`state.snapshot`); writing, uploading and committing happen on one
background thread, at most one save in flight. A failed upload is logged at
once with its cause, leaves `latest` untouched, and raises `CheckpointError`
from the next save after `max_failures` failures in a row (on every rank
alike), or at once for a synchronous save.

The commit is rank 0's: manifest after every rank's files, then the atomic
replace of `latest`, the commit point (trainer.contract, "checkpoint layout").
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable

import torch

from trainer import contract, dist
from trainer.checkpoint import fault_hooks, layout, node_copy, state as st
from trainer.checkpoint.config import CheckpointRun
from trainer.checkpoint.objects import Trainables
from trainer.checkpoint.sweep import remove_leftover_temps
from trainer.errors import CheckpointError, StorageConfigError, one_line
from trainer.storage import FileInfo, join, spool_dir

log = logging.getLogger("kubetrain.checkpoint")


@dataclasses.dataclass
class _SaveJob:
    step: int
    replicated: Any | None  # rank 0 only
    sharded: Any | None
    per_rank: Any
    started: float
    stall_s: float = 0.0  # what training waited for before the write (the upload before it, the snapshot)
    blocking: bool = False  # training waits for the write too


class Saver:
    def __init__(self, run: CheckpointRun, objects: Trainables, on_commit: Callable[[int], None],
                 on_saved: Callable[..., None] | None = None) -> None:
        self.run = run
        self.objects = objects
        self._on_commit = on_commit  # rank 0, after each commit
        #: Every rank, after each save's outcome: on_saved(step, ok=, stall_s=, upload_s=, bytes=) (/metrics).
        self._on_saved = on_saved
        self._thread: threading.Thread | None = None
        self._pruner: threading.Thread | None = None
        #: Allocates the snapshot buffers once training runs (see preallocate); joined before a snapshot.
        self.allocator: threading.Thread | None = None
        #: Host buffers of the last snapshot, reused by the next (see state.snapshot).
        self.buffers: dict[str, dict] = {}
        self.failures = 0
        self.last_error: str | None = None
        #: Set on every rank when a save met a configuration error (StorageConfigError): no retry helps.
        self.permanent: str | None = None
        #: The step whose upload runs in the background, and since when (for the wait's log line).
        self._inflight: tuple[int, float] | None = None
        #: The newest step this run committed or restored.
        self.last_committed: int | None = None
        #: When the last save's snapshot was taken (or the restore ended): the time cadence counts from it.
        self.last_save_time = time.monotonic()

    def save(self, step: int, *, background: bool) -> None:
        """Snapshot now; write and commit on the background thread when `background`, else here."""
        run = self.run
        entered = time.monotonic()
        if self._thread is not None and self._thread.is_alive() and self._inflight and run.rank == 0:
            # Training stalls here for as long as the upload takes: say why, or a slow store looks like a hang.
            prev, since = self._inflight
            log.warning("checkpoint %s waits for the upload of %s to %s (in flight for %.1fs) before its snapshot",
                        contract.step_dir_name(step), contract.step_dir_name(prev), run.run_uri,
                        time.monotonic() - since)
        self.wait()
        # After wait() every rank has the outcome of the same saves, so all raise together.
        self.raise_if_failing()
        job = self._stage(step)
        self.last_save_time = time.monotonic()
        job.stall_s, job.blocking = self.last_save_time - entered, not background
        if not background:
            self._run(job)
            if self.permanent is not None:
                raise StorageConfigError(self.permanent)
            if self.last_error is not None and self.failures:
                raise CheckpointError(self.last_error)
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

    def raise_if_failing(self) -> None:
        if self.permanent is not None:
            raise StorageConfigError(self.permanent)
        if self.failures >= self.run.config.max_failures:
            raise CheckpointError(f"{self.failures} checkpoints in a row failed; the last: {self.last_error}")

    def preallocate(self, step: int) -> None:
        """Allocate the snapshot buffers on a background thread after the first step.

        After it, not in restore(): a lazily built optimizer state (Adam's) exists
        only once a step ran. The shapes are read here, on the training thread; the
        thread only allocates, so it never races the optimizer.
        """
        replicated, sharded, _ = self.objects.to_snapshot(step, self.run.rank)
        b = self.buffers
        specs = [(st.buffer_specs(replicated), b.setdefault("replicated", {}))]
        if sharded is not None:
            specs.append((st.buffer_specs(sharded), b.setdefault("sharded", {})))

        def allocate() -> None:
            try:
                for spec, buffers in specs:
                    st.allocate(spec, buffers)
            except Exception as e:  # noqa: BLE001 - the first snapshot allocates what is missing
                log.warning("rank %d: could not preallocate checkpoint buffers (%s); the first save will",
                            self.run.rank, one_line(str(e)))

        self.allocator = threading.Thread(target=allocate, name="kubetrain-prealloc", daemon=True)
        self.allocator.start()

    def _stage(self, step: int) -> _SaveJob:
        t0 = time.monotonic()
        if self.allocator is not None:
            self.allocator.join()
        replicated, sharded, per_rank = self.objects.to_snapshot(step, self.run.rank)
        b = self.buffers
        job = _SaveJob(step=step, replicated=st.snapshot(replicated, b.setdefault("replicated", {})),
                       sharded=st.snapshot(sharded, b.setdefault("sharded", {})) if sharded is not None else None,
                       per_rank=st.snapshot(per_rank), started=t0)
        log.debug("rank %d: snapshot of step %d took %.3fs", self.run.rank, step, time.monotonic() - t0)
        return job

    def _run(self, job: _SaveJob) -> None:
        """Write this rank's files, then rank 0 commits; every rank learns the outcome."""
        run = self.run
        step_uri = join(run.run_uri, contract.step_dir_name(job.step))
        began = time.monotonic()
        upload_s, nbytes = 0.0, 0
        #: This rank's files on their way into the node copy: kept once the step commits, else dropped.
        staged: list[tuple[str | None, FileInfo]] = []
        try:
            fault_hooks.injected_outage()
            files: dict[str, FileInfo] = {}
            # The small rank file first: once it landed, a listing shows the step folder, so a kill
            # in the big upload after it leaves an open upload the next start can find on a server
            # that lists uploads only by exact key (MinIO; sweep.files_a_cut_save_may_have_open).
            files[contract.rank_file(run.rank)] = self._write(
                step_uri, contract.rank_file(run.rank), lambda f: torch.save(job.per_rank, f), staged)
            if job.replicated is not None:
                files[layout.REPLICATED_FILE] = self._write(
                    step_uri, layout.REPLICATED_FILE, lambda f: torch.save(job.replicated, f), staged)
            if job.sharded is not None:
                files.update(self._write_sharded(step_uri, job.sharded, staged))
            upload_s, nbytes = time.monotonic() - began, sum(f.size for f in files.values())
            mine: tuple[str, Any] = ("ok", files)
        except StorageConfigError as e:  # the bucket or the credentials: no later save can succeed either
            mine = ("permanent", str(e))
        except Exception as e:  # reported through the commit outcome, never swallowed
            mine = ("error", f"rank {run.rank}: {type(e).__name__}: {e}")
        job.replicated = job.sharded = job.per_rank = None  # free the snapshot before the commit
        gathered = dist.gather_objects(mine, run.commit_group)
        outcome: tuple[str, str] = ("ok", "")
        if run.rank == 0:
            assert gathered is not None
            permanent = [msg for kind, msg in gathered if kind == "permanent"]
            errors = [msg for kind, msg in gathered if kind == "error"]
            outcome = (("permanent", permanent[0]) if permanent else ("error", "; ".join(errors)) if errors
                       else self._commit(job.step, gathered))
        outcome = dist.broadcast_object(outcome, run.commit_group)
        if outcome[0] == "ok":
            if run.node is not None:
                # Here, before this thread ends: the next save (whose commit lets other ranks prune
                # this step) starts only after it (node_copy.keep).
                node_copy.keep(run.node, job.step, staged)
            self.failures, self.last_error = 0, None
            self.last_committed = job.step
            if run.rank == 0:
                log.info("checkpoint %s committed in %.2fs", contract.step_dir_name(job.step),
                         time.monotonic() - job.started)
                self._on_commit(job.step)
        else:
            node_copy.drop(p for p, _ in staged)
            self.failures += 1
            if outcome[0] == "permanent":
                self.permanent = outcome[1]
            # The run's folder, not the root: several runs share a root, and this is the one whose `latest` stayed.
            self.last_error = (f"checkpoint {contract.step_dir_name(job.step)} failed, {run.run_uri}/"
                               f"{contract.LATEST_NAME} still points at step {self.last_committed}: {outcome[1]}")
            if run.rank == 0:
                log.error("%s (%d in a row; training stops after %d)", self.last_error, self.failures,
                          run.config.max_failures)
        if self._on_saved is not None:
            stall = job.stall_s + (time.monotonic() - began if job.blocking else 0.0)
            self._on_saved(job.step, ok=outcome[0] == "ok", stall_s=stall, upload_s=upload_s, bytes=nbytes)

    def _commit(self, step: int, gathered: list[tuple[str, Any]]) -> tuple[str, str]:
        """Rank 0: manifest after every file, `latest` after the manifest, then prune."""
        run = self.run
        files: dict[str, FileInfo] = {}
        for _, f in gathered:
            files.update(f)
        step_uri = join(run.run_uri, contract.step_dir_name(step))
        try:
            fault_hooks.kill_point("files", step)
            fault_hooks.injected_slow_commit()
            # Every rank's writes to the step ended (gathered): a temp file left in its folder is a kill's.
            remove_leftover_temps(run.storage, step_uri, recursive=True)
            manifest = layout.Manifest(step=step, world_size=run.world_size,
                                       kind="sharded" if any(k.startswith(layout.SHARDED_DIR + "/") for k in files)
                                       else "replicated", files=files, created=time.time())
            run.storage.write_small(join(step_uri, contract.MANIFEST_NAME), layout.manifest_to_bytes(manifest))
            fault_hooks.kill_point("manifest", step)
            remove_leftover_temps(run.storage, run.run_uri)  # a `latest.tmp-*` of an earlier commit cut short
            # The commit point (trainer.contract, "checkpoint layout"): the step is committed once this replace lands.
            run.storage.write_small(join(run.run_uri, contract.LATEST_NAME), f"{step}\n".encode(),
                                    before_replace=lambda: fault_hooks.kill_point("latest-tmp", step))
            fault_hooks.kill_point("latest", step)
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
        storage, run_uri = self.run.storage, self.run.run_uri
        all_steps = layout.steps_in_listing(storage.list_names(run_uri))
        committed = [s for s in all_steps if s == newest or storage.read_small(
            join(run_uri, contract.step_dir_name(s), contract.MANIFEST_NAME)) is not None]
        for s in layout.steps_to_prune(committed, all_steps, newest=newest, keep=self.run.config.keep):
            step_uri = join(run_uri, contract.step_dir_name(s))
            # Manifest first: a prune cut short must leave an uncommitted folder, not a committed hole.
            storage.remove(join(step_uri, contract.MANIFEST_NAME))
            fault_hooks.kill_point("prune", newest)
            storage.remove_tree(step_uri)

    def _write(self, step_uri: str, name: str, write: Callable[[Any], None],
               staged: list[tuple[str | None, FileInfo]]) -> FileInfo:
        """Upload one file; with a node copy, the same bytes also go to an incoming file of it (`staged`)."""
        node = self.run.node
        if node is None:
            return self.run.storage.write_file(join(step_uri, name), write)
        attempts: list[str] = []
        try:
            info = self.run.storage.write_file(join(step_uri, name), node_copy.teed(node, write, attempts))
        except BaseException:
            node_copy.drop(attempts)
            raise
        staged.append((node_copy.last_complete(attempts), info))
        return info

    def _write_sharded(self, step_uri: str, state: Any, staged: list[tuple[str | None, FileInfo]]
                       ) -> dict[str, FileInfo]:
        """Every rank's shards through torch.distributed.checkpoint, staged locally, then uploaded."""
        import torch.distributed.checkpoint as dcp

        local = tempfile.mkdtemp(dir=spool_dir(), prefix=f"dcp-save-r{self.run.rank}-")
        try:
            dcp.save(state, storage_writer=dcp.FileSystemWriter(local, sync_files=False),
                     process_group=self.run.commit_group)
            out = {}
            for name in sorted(os.listdir(local)):
                src = os.path.join(local, name)

                def copy(f, src=src):
                    with open(src, "rb") as r:
                        shutil.copyfileobj(r, f, 8 << 20)

                out[f"{layout.SHARDED_DIR}/{name}"] = info = self.run.storage.write_file(
                    join(step_uri, layout.SHARDED_DIR, name), copy)
                if self.run.node is not None:  # the staged bytes are the node copy's: a link, no copy
                    staged.append((node_copy.stage(self.run.node, src), info))
            return out
        finally:
            shutil.rmtree(local, ignore_errors=True)
