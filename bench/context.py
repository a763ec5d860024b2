"""What one metric is asked to measure, handed from the bench's CLI to the process that runs it."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

#: The repository root: metrics start `python -m trainer run bench/workload.py` and torchrun from here.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOAD = os.path.join(REPO, "bench", "workload.py")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Context:
    """One metric's run: its size, repetitions and where to put things."""

    #: The checkpointed state's size in MiB (the metrics that do not depend on it ignore it).
    mib: int
    #: Timed repetitions of each measurement (median of these).
    reps: int
    #: Trials of the metrics that send signals (M4, M6).
    trials: int
    #: --quick: fewer steps and runs, a smoke run.
    quick: bool
    #: The bucket on the bench's moto server (AWS_ENDPOINT_URL is in the environment).
    bucket: str
    #: A scratch directory, removed when the bench ends.
    tmp: str
    #: Results of metrics that ran earlier at this size, by id (M2 and M4 size themselves from M3's).
    earlier: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Context":
        return cls(**json.loads(text))


def progress(message: str) -> None:
    """One line on stderr, so a long run shows where it is (stdout holds the results)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)
