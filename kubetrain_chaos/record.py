"""What a chaos check recorded: the facts the verdict is computed from, and nothing else.

The driver (driver.py) fills these in while it runs the script; the oracle (oracle.py) reads
only them. A recorded run saved as JSON (`events.json` in the work folder) gives the same
verdict whenever it is judged again, so the verdict can be tested on recorded runs.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

#: Phases of a commit a kill can land in (trainer/checkpoint: every file, then manifest.json,
#: then `latest` replaced atomically; a step is committed once `latest` names it, never before).
PHASE_FILES = "files"  # some of the step's files, no manifest
PHASE_MANIFEST = "manifest"  # its manifest written, `latest` not yet replaced
PHASE_LATEST = "latest"  # its manifest written and a `latest.tmp-*` holding it: `latest` was being replaced
PHASE_COMMITTED = "committed"  # `latest` named it: the kill came after the commit point


@dataclasses.dataclass
class FaultRecord:
    kind: str
    #: The planned fault's number (1..n) and step; None for an exit nobody injected.
    number: int | None = None
    at_step: int | None = None
    injected_at: int | None = None  # the ranks' progress when it hit (None: the run ended first)
    exit_code: int | None = None  # None: the run went on (an outage it rode out)
    stop_step: int | None = None  # from the log's contract line LOG_PREEMPTED: the step a stop committed
    #: The run folder once the attempt had ended (every process gone, before the restart):
    latest_after: int | None = None  # the step `latest` named: the committed step at the kill
    intact_after: list[int] = dataclasses.field(default_factory=list)  # steps whose manifest and files verify
    corrupted: int | None = None  # corrupt-checkpoint: the step damaged on purpose
    #: kill-during-upload: the step being written when the kill was sent, and how far its commit got.
    writing: int | None = None
    phase: str | None = None
    latest_tmp: int | None = None  # what a leftover `latest.tmp-*` held
    resumed_from: int | None = None  # the step the restart resumed from (0: it started fresh)
    #: Whether the restart logged contract.LOG_RESUMED; False: it trained without restoring anything.
    resume_logged: bool | None = None
    detail: str = ""  # what was done, in words
    #: The step the plan made the restart resume from (None: not chosen, e.g. a SIGTERM's stop step).
    planned_resume: int | None = None
    kill_phase: str | None = None  # kill-during-upload: the commit phase rank 0 was killed at
    #: The same supervisor restarted its ranks (an in-place restart) rather than exiting for a new start.
    in_place: bool = False

    @property
    def label(self) -> str:
        return f"fault {self.number}" if self.number is not None else f"the unplanned exit at step {self.injected_at}"

    @property
    def redone(self) -> int | None:
        if self.injected_at is None or self.resumed_from is None:
            return None
        return max(0, max(self.injected_at, self.stop_step or 0) - self.resumed_from)


@dataclasses.dataclass
class RunRecord:
    seed: int
    tolerance: float | None
    reference_steps: int  # the reference run's final committed step
    reference_seconds: float
    reference_committed: list[int]  # intact steps of the reference run, ascending
    faults: list[FaultRecord]
    final_code: int | None = None
    final_latest: int | None = None  # `latest` of the faulted run at its end
    run_committed: list[int] = dataclasses.field(default_factory=list)  # its intact steps, ascending
    #: {step: {"file:path": how}} for every step both runs committed (damaged ones left out).
    comparisons: dict[int, dict[str, str]] = dataclasses.field(default_factory=dict)
    workdir: str = ""
    #: What the plan aimed to cover (coverage.goal): --epoch-steps, --thorough, and how many faults it planned.
    epoch_steps: int | None = None
    thorough: bool = False
    faults_asked: int = 0

    def rows(self) -> list[FaultRecord]:
        """The faults in the order they hit (their step), planned before unplanned at the same step."""
        return sorted(self.faults, key=lambda r: (r.injected_at if r.injected_at is not None else
                                                  (r.at_step if r.at_step is not None else 1 << 62),
                                                  r.number is None, r.number or 0))

    def to_json(self) -> str:
        doc = dataclasses.asdict(self)
        doc["comparisons"] = {str(k): v for k, v in self.comparisons.items()}
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        doc: dict[str, Any] = json.loads(text)
        fields = {f.name for f in dataclasses.fields(FaultRecord)}
        doc["faults"] = [FaultRecord(**{k: v for k, v in f.items() if k in fields}) for f in doc["faults"]]
        doc["comparisons"] = {int(k): v for k, v in (doc.get("comparisons") or {}).items()}
        keep = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in keep})
