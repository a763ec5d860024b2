"""Two runs' checkpoints of the same step, compared leaf by leaf, and each difference sorted by
what a user should fix first: step numbering, then data position, then model/optimizer state,
then RNG. Every message names the sides: the resumed run's value, then the uninterrupted
reference's.
"""

from __future__ import annotations

import os
import re
from typing import Any

from kubetrain_chaos import checkpoints
from trainer import contract

#: Categories, in the order a user should look at them.
STEP_NUMBERING = "step numbering"
DATA_POSITION = "data position"
MODEL_STATE = "model/optimizer state"
RNG = "RNG"
CATEGORIES = (STEP_NUMBERING, DATA_POSITION, MODEL_STATE, RNG)

_DATA_WORDS = {"sampler", "loader", "dataloader", "data", "dataset", "epoch", "offset", "position", "cursor",
               "consumed", "index", "batch", "batches"}
_RNG_WORDS = re.compile(r"rng|generator|random|noise|seed")


def category(key: str) -> str:
    """'rank-00000.pt:state.sampler.offset' -> 'data position'."""
    f, _, path = key.partition(":")
    parts = path.split(".") if path else []
    if parts == ["step"]:
        return STEP_NUMBERING
    if not f.endswith(".pt") or not parts or parts[0] in ("model", "optimizer", "scheduler"):
        return MODEL_STATE
    if parts[0] == "rng":
        return RNG
    words = [p.lower() for p in parts[1:] if not p.isdigit()]
    if any(w in _DATA_WORDS or w.endswith("sampler") for w in words):
        return DATA_POSITION
    if any(_RNG_WORDS.search(w) for w in words):
        return RNG
    return MODEL_STATE  # extra/per-rank state of the script's own: an EMA, an accumulation counter


def stream(key: str) -> str:
    """'rank-00000.pt:rng.python.1.7' -> 'rank-00000.pt:rng.python': one RNG stream."""
    f, _, path = key.partition(":")
    return f"{f}:{'.'.join(path.split('.')[:2])}"


def ordered(diffs: dict[str, str]) -> list[str]:
    """The keys of `diffs`, what to fix first first (category, then name)."""
    return sorted(diffs, key=lambda k: (CATEGORIES.index(category(k)), k))


def _sides(resumed: str, reference: str) -> str:
    return f"{resumed} (resumed) vs {reference} (uninterrupted reference)"


def diff_states(ref: Any, run: Any, tolerance: float | None, path: str = ""):
    """Yield (path, how) for every leaf where the resumed run's state differs from the reference's."""
    import torch

    if isinstance(ref, torch.Tensor) and isinstance(run, torch.Tensor):
        if ref.shape != run.shape or ref.dtype != run.dtype:
            yield path, "shape/dtype " + _sides(f"{tuple(run.shape)}/{run.dtype}", f"{tuple(ref.shape)}/{ref.dtype}")
        elif tolerance is not None and ref.is_floating_point():
            if not torch.allclose(run, ref, rtol=tolerance, atol=tolerance, equal_nan=True):
                yield path, (f"max |resumed - reference| {(run.double() - ref.double()).abs().max().item():.3g} "
                             f"> {tolerance:g}")
        elif not torch.equal(ref.nan_to_num(), run.nan_to_num()) if ref.is_floating_point() else \
                not torch.equal(ref, run):
            yield path, (f"max |resumed - reference| {(run.double() - ref.double()).abs().max().item():.3g}"
                         if ref.is_floating_point() else f"{int((ref != run).sum())} of {ref.numel()} values differ "
                         "from the reference")
    elif isinstance(ref, dict) and isinstance(run, dict):
        if set(ref) != set(run):
            only_run, only_ref = sorted(map(str, set(run) - set(ref))), sorted(map(str, set(ref) - set(run)))
            yield path, "keys " + _sides(str(only_run), str(only_ref)) + " only"
        for k in ref.keys() & run.keys():
            yield from diff_states(ref[k], run[k], tolerance, f"{path}.{k}" if path else str(k))
    elif isinstance(ref, (list, tuple)) and isinstance(run, (list, tuple)):
        if len(ref) != len(run):
            yield path, "length " + _sides(str(len(run)), str(len(ref)))
        for i, (x, y) in enumerate(zip(ref, run)):
            yield from diff_states(x, y, tolerance, f"{path}.{i}" if path else str(i))
    elif type(ref).__name__ == "ndarray" and type(run).__name__ == "ndarray":  # numpy RNG state
        if ref.shape != run.shape or not (ref == run).all():
            yield path, "arrays differ from the reference"
    elif isinstance(ref, float) and isinstance(run, float) and tolerance is not None:
        if abs(run - ref) > tolerance * max(1.0, abs(ref)):
            yield path, _sides(repr(run), repr(ref))
    elif ref != run:
        yield path, _sides(repr(run), repr(ref))


def diff_steps(ref_dir: str, run_dir: str, step: int, tolerance: float | None) -> dict[str, str]:
    """'file:path' -> how, for everything that differs between the same step of two runs."""
    import torch

    name = contract.step_dir_name(step)
    ma, mb = checkpoints.manifest(ref_dir, step), checkpoints.manifest(run_dir, step)
    assert ma is not None and mb is not None
    out: dict[str, str] = {}
    for f in sorted(set(ma.files) ^ set(mb.files)):
        out[f] = "in only one of the runs"
    for f in sorted(set(ma.files) & set(mb.files)):
        if not f.endswith(".pt"):  # sharded (DCP) data: bytes, by checksum
            if f.endswith("/.metadata"):
                continue  # DCP's index holds a fresh save id on every save; the shards it indexes are compared
            if ma.files[f].sha256 != mb.files[f].sha256 and tolerance is None:
                out[f] = "contents differ from the reference"
            continue

        def load(d: str) -> Any:
            return torch.load(os.path.join(d, name, f), map_location="cpu", weights_only=False)

        rng: dict[str, int] = {}
        for path, how in diff_states(load(ref_dir), load(run_dir), tolerance):
            if path.startswith("rng."):  # one line per RNG stream, not one per word of its state
                key = stream(f"{f}:{path}")
                rng[key] = rng.get(key, 0) + 1
            else:
                out[f"{f}:{path}"] = how
        for key, n in rng.items():
            out[key] = f"{n} part(s) of its state differ from the reference"
    return out


class StepComparisons:
    """The faulted run's steps compared with the reference's as each attempt left them.

    Compared at every attempt's end, not only at the run's: a later commit with a small --keep
    prunes early steps (a kill-during-upload's), and the steps committed before the first fault
    are what tells the script's own unseeded RNG streams from a resume bug (oracle.py). A step
    is compared again only when its manifest changed (a later attempt wrote it anew), and then
    what either comparison found is kept. A step a fault damaged on purpose is never compared.
    """

    def __init__(self, ref_dir: str, run_dir: str, tolerance: float | None) -> None:
        self.ref_dir, self.run_dir, self.tolerance = ref_dir, run_dir, tolerance
        self.ref_steps = set(checkpoints.intact_steps(ref_dir))
        self.found: dict[int, dict[str, str]] = {}
        self._seen: dict[int, str] = {}  # step -> the manifest digest it was compared at

    def update(self, damaged: set[int]) -> None:
        """Compare every intact step of the run folder not yet compared as it is now."""
        for step in checkpoints.intact_steps(self.run_dir):
            if step not in self.ref_steps or step in damaged:
                continue
            digest = checkpoints.manifest_digest(self.run_dir, step)
            if self._seen.get(step) == digest:
                continue
            self._seen[step] = digest
            self.found[step] = {**self.found.get(step, {}),
                                **diff_steps(self.ref_dir, self.run_dir, step, self.tolerance)}

    def result(self, damaged: set[int]) -> dict[int, dict[str, str]]:
        return {s: d for s, d in sorted(self.found.items()) if s not in damaged}
