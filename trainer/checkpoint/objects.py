"""The live objects a checkpoint captures, and the two ways state moves: out (a snapshot) and in (apply)."""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import torch

from trainer.checkpoint import resize, state as st
from trainer.checkpoint.loader import Loaded, discard


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class Trainables:
    """The model, optimizer, scheduler, extra (rank 0's) and per-rank objects of one training loop."""

    def __init__(self, model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None, scheduler: Any | None,
                 extra: Mapping[str, Stateful], per_rank: Mapping[str, Stateful]) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.extra = dict(extra)
        self.per_rank = dict(per_rank)

    def model_optim_state(self) -> tuple[Any, Any]:
        if self.model is None:
            return None, None
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        if self.optimizer is None:
            return get_model_state_dict(self.model), None
        return get_state_dict(self.model, self.optimizer)

    def to_snapshot(self, step: int, rank: int) -> tuple[Any, Any, dict[str, Any]]:
        """(replicated, sharded, per-rank) state of this rank: what a save copies to host memory."""
        msd, osd = self.model_optim_state()
        sharded = st.is_sharded(msd) or st.is_sharded(osd)
        replicated = None
        if rank == 0:
            replicated = {"step": step, "extra": {k: v.state_dict() for k, v in self.extra.items()}}
            if self.scheduler is not None:
                replicated["scheduler"] = self.scheduler.state_dict()
            if not sharded:
                replicated["model"], replicated["optimizer"] = msd, osd
        per_rank = {"step": step, "rng": st.rng_state(), "state": {k: v.state_dict() for k, v in self.per_rank.items()}}
        return replicated, {"model": msd, "optimizer": osd} if sharded else None, per_rank

    def apply(self, loaded: Loaded, group: Any, *, rank: int, world_size: int, warm: bool = False,
              warm_optimizer: bool = False) -> None:
        """Load `loaded` into the live objects.

        `warm` (a warm start): the model, and the optimizer only with `warm_optimizer`;
        never the LR scheduler, extra or per-rank state, which belong to the run that saved them.
        """
        weights_only = warm and not warm_optimizer
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        rep = loaded.replicated or {}
        if loaded.dcp_dir is not None and self.model is not None:
            import torch.distributed.checkpoint as dcp

            msd, osd = self.model_optim_state()
            target = {"model": msd} if weights_only else {"model": msd, "optimizer": osd}
            dcp.load(target, storage_reader=dcp.FileSystemReader(loaded.dcp_dir), process_group=group)
            msd, osd = target["model"], target.get("optimizer")
        else:
            msd, osd = rep.get("model"), None if weights_only else rep.get("optimizer")
        if self.model is not None and msd is not None:
            if self.optimizer is not None and osd is not None:
                set_state_dict(self.model, self.optimizer, model_state_dict=msd, optim_state_dict=osd)
            else:
                set_model_state_dict(self.model, msd)
        if warm:
            discard(loaded)
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
            resize.after_restore(rank, world_size, loaded.saved_world_size, loaded.step,
                                 restored_rng=loaded.per_rank is not None, extra=self.extra, per_rank=self.per_rank)
        discard(loaded)
