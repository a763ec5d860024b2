"""What crosses inside a pod: the log lines `launch` reads back, fault-injection files.

The control folder between a supervisor and its ranks has a module of its own,
trainer/control_folder.py: the launcher never reads it.
"""

from __future__ import annotations

import re

# --- runtime log lines that the launcher reads back (launch status) ---------------

#: Logged by rank 0 after restore(); the launcher parses it, so both use this text.
LOG_RESUMED = "resuming after step {step}"
#: Logged by rank 0 when a run without a checkpoint of its own starts from another run's.
LOG_WARM_START = "warm start from {uri} step {step}"
#: Logged by rank 0 once the preemption checkpoint committed.
LOG_PREEMPTED = "preempted: checkpoint step {step} committed"
#: Logged by the supervisor when it starts its ranks again itself after a lost rank (an in-place
#: restart), before the new torchrun starts; `launch chaos` reads the exit code of the attempt it ended.
LOG_RESTARTING_IN_PLACE = "restarting in place ({n} of {budget}) after exit {code}"
#: Logged by the supervisor once the warm spare for the next in-place restart has torch imported
#: (trainer/supervisor/spare.py); the in-place bench waits for it.
LOG_SPARE_WARM = "warm spare ready for an in-place restart"
_RESUMED_RE = re.compile(r"resuming after step (\d+)")
_IN_PLACE_RE = re.compile(r"restarting in place \((\d+) of \d+\) after exit (\d+)")
_PREEMPTED_RE = re.compile(r"preempted: checkpoint step (\d+) committed")


def parse_runtime_log(lines: list[str]) -> dict[str, int | None]:
    """The last resume and preemption steps a runtime log reports, and its last in-place restart
    (how many so far, and the exit code of the attempt it ended)."""
    out: dict[str, int | None] = {"resumed_from": None, "preempted_at": None, "in_place": None,
                                  "in_place_after": None}
    for line in lines:
        if m := _IN_PLACE_RE.search(line):
            out["in_place"], out["in_place_after"] = int(m.group(1)), int(m.group(2))
        if m := _RESUMED_RE.search(line):
            out["resumed_from"] = int(m.group(1))
        if m := _PREEMPTED_RE.search(line):
            out["preempted_at"] = int(m.group(1))
    return out


# --- fault-injection files in ENV_FAULTS_DIR (launch chaos) ---

#: What `launch chaos --local` can do to a run (kubetrain_chaos/plan.py says what each one is).
CHAOS_KINDS = ("sigterm", "kill-worker", "kill-during-upload", "corrupt-checkpoint", "storage-outage")
#: Kinds that are not in the default mix: asked for by name with --kinds (a script without
#: DataLoader workers has nothing for them to hit).
CHAOS_EXTRA_KINDS = ("kill-loader-worker",)
FAULT_STORAGE_OUTAGE = "storage-outage"  # while present, every checkpoint write fails as in an outage
FAULT_SLOW_COMMIT = "slow-commit"  # holds seconds: rank 0 waits that long before writing a manifest,
# which widens the window in which a kill leaves a partial (uncommitted) step behind
#: Holds "<phase> <step>": rank 0 SIGKILLs its own process when the commit of that step reaches that
#: phase (COMMIT_PHASES), so a test can cut a commit at each of its boundaries deterministically.
FAULT_KILL_AT = "kill-at"
#: The phases of a commit, in order (see "checkpoint layout" above for what each leaves behind):
#: every rank's files written; the manifest written; `latest`'s temp file written but not yet renamed
#: over `latest` (local folders; elsewhere the put is atomic and this is "manifest"); `latest` replaced
#: (committed); the prune of older steps under way (one step's manifest removed, its folder not yet).
COMMIT_PHASES = ("files", "manifest", "latest-tmp", "latest", "prune")
