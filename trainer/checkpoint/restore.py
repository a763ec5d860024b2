"""The one restore policy, for a run's own checkpoints and for warm starts alike.

Restore never goes backwards on a storage error: a step is passed over for an older
one only when it is verified unusable (no manifest, a size or sha256 mismatch, a
missing file). One that cannot be read is read again with backoff for
`storage_timeout` seconds; then the run raises StorageError (exit INFRA, retried
later) with `latest` untouched. Which steps are tried, in which order, is
layout.restore_candidates: the step `latest` names, then older ones.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from trainer import contract, dist
from trainer.checkpoint import layout, node_copy
from trainer.checkpoint.config import CheckpointRun
from trainer.checkpoint.loader import Loaded, StepVerdict, discard, handoff_prefix, try_load
from trainer.errors import CheckpointError, StorageConfigError, StorageError, one_line
from trainer.storage import Storage, join, open_storage

log = logging.getLogger("kubetrain.checkpoint")


def candidates(run_uri: str, storage: Storage) -> list[int]:
    """Rank 0: the steps restore may use, best first: the one `latest` names, then older ones."""
    raw = storage.read_small(join(run_uri, contract.LATEST_NAME))
    listed = layout.steps_in_listing(storage.list_names(run_uri)) if raw is not None else []
    return layout.restore_candidates(raw, listed)


class StorageWait:
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


class Restorer:
    """Every rank runs the same calls; rank 0 lists, every rank loads its own files, all agree."""

    def __init__(self, run: CheckpointRun, stop_requested: Callable[[], bool]) -> None:
        self.run = run
        self._stop_requested = stop_requested
        self.wait = StorageWait(run.config.storage_timeout)

    def own(self, token: str) -> Loaded | None:
        """The newest step of this run's own folder that every rank loads and verifies; None if none."""
        run = self.run
        steps = self.agreed_listing(lambda: candidates(run.run_uri, run.storage),
                                    f"the checkpoints listed in {run.run_uri}")
        return self.first_usable(run.run_uri, run.storage, steps, per_rank=True,
                                 shared=handoff_prefix(token, run.storage))

    def agreed_listing(self, list_fn: Callable[[], Any], what: str) -> Any:
        """`list_fn()` on rank 0, the same answer on every rank; retried like a step's read.

        Rank 0 alone decides whether to retry or give up and broadcasts it, so the ranks
        cannot disagree about the deadline.
        """
        run, wait = self.run, self.wait
        while True:
            answer: tuple = ("ok", None)
            if run.rank == 0:
                try:
                    answer = ("ok", list_fn())
                except StorageConfigError as e:
                    answer = ("permanent", str(e))
                except (StorageError, OSError) as e:  # nothing learned about the checkpoints: ask again
                    wait.start()
                    answer = ("transient", f"{type(e).__name__}: {one_line(str(e))}", wait.expired(),
                              wait.next_delay())
            answer = dist.broadcast_object(answer, run.control_group)
            if answer[0] == "ok":
                wait.reset()
                return answer[1]
            if answer[0] == "permanent":
                raise StorageConfigError(answer[1])
            _, reason, expired, delay = answer
            if expired:
                raise StorageError(wait.give_up_message(what, reason))
            if dist.all_reduce_max([int(self._stop_requested())], run.control_group)[0]:
                self._stop_unrestored(what)
            if run.rank == 0:
                log.warning("%s", wait.retry_message(what, reason, delay))
            time.sleep(delay)

    def first_usable(self, run_uri: str, storage: Storage, steps: list[int], *, per_rank: bool,
                     shared: str | None) -> Loaded | None:
        """The one restore policy (own checkpoints and warm starts): the first of `steps` that every
        rank loads and verifies, loaded; None when every one is verified unusable.

        Per step the ranks agree on the worst verdict (StepVerdict): a verified-unusable step is
        skipped for the next; a storage error on any rank reads the same step again after a
        backoff, until the wait expires (StorageError, exit INFRA); a configuration error stops
        at once (StorageConfigError, exit 2).
        """
        run, wait = self.run, self.wait
        i = attempt = 0
        while i < len(steps):
            step = steps[i]
            # A fresh handoff name per attempt: the failure marker of the last one stays until discard.
            loaded, failure = try_load(run, step, run_uri=run_uri, storage=storage, per_rank=per_rank,
                                       shared=f"{shared}a{attempt}-" if shared else None)
            mine = failure[0] if failure is not None else StepVerdict.OK
            agreed, expired, stop = dist.all_reduce_max([int(mine), int(wait.expired()), int(self._stop_requested())],
                                                        run.control_group)
            agreed = StepVerdict(agreed)
            if agreed is StepVerdict.OK:
                wait.reset()
                if run.node is not None and run_uri == run.run_uri:
                    # Every rank is done reading: what this one fetched is now the node's newest step.
                    node_copy.keep(run.node, step, loaded.staged)
                    loaded.staged.clear()
                log.info("restore: rank %d: step %d from %s", run.rank, step, loaded.describe_sources())
                return loaded
            discard(loaded)
            if failure is not None:
                log.warning("rank %d: checkpoint %s/%s: %s (%s)", run.rank, run_uri, contract.step_dir_name(step),
                            failure[1], failure[0].describe())
            reason = self._reason_of(agreed, mine, failure[1] if failure is not None else "")
            if agreed is StepVerdict.PERMANENT:
                raise StorageConfigError(reason)
            if agreed is StepVerdict.UNUSABLE:
                wait.reset()
                i, attempt = i + 1, 0
                if run.rank == 0:
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
            if run.rank == 0:
                log.warning("%s", wait.retry_message(what, reason, delay))
            time.sleep(delay)
            attempt += 1
        return None

    def _stop_unrestored(self, what: str) -> None:
        """A stop request while restore waits out a storage error: there is nothing to save, so leave now
        rather than at the grace deadline. Exit 143 even under the supervisor (not 0, as after a committed
        stop): an exit 0 of every rank reads as "finished", and there is no peer still saving to wait for."""
        if self.run.rank == 0:
            log.warning("stop requested while restore waited to read %s; exiting without a checkpoint "
                        "(`latest` untouched)", what)
        raise SystemExit(int(contract.ExitCode.PREEMPTED))

    def _reason_of(self, agreed: StepVerdict, mine: StepVerdict, reason: str) -> str:
        """The reason of the lowest rank whose verdict is `agreed`, on every rank (two collectives,
        only on a failure): each rank logs its own, but a StorageError or the exit names one."""
        run = self.run
        n = run.world_size
        top = dist.all_reduce_max([n - run.rank if mine is agreed else 0], run.control_group)[0]
        return dist.broadcast_object(f"rank {run.rank}: {reason}" if mine is agreed else "", run.control_group,
                                     src=n - top) if top else reason

    # --- warm start -----------------------------------------------------------------

    def warm_start_runs(self) -> list[str]:
        """Rank 0: run folders to warm-start from, best first."""
        config, storage = self.run.config, self.run.storage
        source = config.warm_start_from
        assert source
        if source != contract.WARM_START_LATEST:
            return [source.rstrip("/")]
        this_run = contract.parse_scheduled_run_name(config.run_id)
        if this_run is None:
            raise CheckpointError(f"warm start from {source!r} needs a scheduled run id (SCHEDULE-MINUTES), "
                                  f"got {config.run_id!r}")
        earlier = []
        for name in storage.list_names(storage.uri):
            other = contract.parse_scheduled_run_name(name.rstrip("/").rsplit("/", 1)[-1])
            if other is not None and other[0] == this_run[0] and other[1] < this_run[1]:
                earlier.append(other[1])
        # Newest first: a previous run that never committed a step is passed over for the one before it.
        return [join(storage.uri, f"{this_run[0]}-{m}") for m in sorted(set(earlier), reverse=True)]

    def warm_start(self, token: str) -> tuple[str, Loaded] | None:
        """The newest committed step of the first warm-start run that has one, loaded on every rank alike,
        and its run folder; None when `latest` was asked for and no earlier run has one."""
        config = self.run.config

        def runs_with_steps() -> list[tuple[str, list[int]]]:
            found = []
            for run_uri in self.warm_start_runs():
                steps = candidates(run_uri, open_storage(run_uri))
                if steps:
                    found.append((run_uri, steps))
            return found

        runs = self.agreed_listing(runs_with_steps, f"the runs to warm-start from ({config.warm_start_from})")
        for n, (run_uri, steps) in enumerate(runs):
            storage = open_storage(run_uri)
            loaded = self.first_usable(run_uri, storage, steps, per_rank=False,
                                       shared=handoff_prefix(f"{token}-{n}", storage))
            if loaded is not None:
                return run_uri, loaded
        if config.warm_start_from != contract.WARM_START_LATEST:
            # Asked for a particular run: starting from scratch instead would not be what was asked.
            raise CheckpointError(f"warm start: no usable committed checkpoint under {config.warm_start_from}")
        return None
