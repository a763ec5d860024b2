"""The runtime's settings: ONE table, from which everything else about them is derived.

Each row joins a setting's `python -m trainer run` flag, its KUBETRAIN_* variable (named in
trainer.contract, which the launcher writes), its RunConfig field, its default, its bounds, its
help, and whether (and under which name) the Checkpointer in each rank reads it. From the table:

    cli.py          the flags, their env defaults and their checks       (build_parser, check)
    RunConfig       the supervisor's frozen config                        (one field per row)
    worker_env      what the supervisor passes to the ranks               (to_worker_env)
    CheckpointConfig.from_env   what a rank reads back                   (from_env)

So a new setting is one row here (and, when the launcher sets it, one ENV_ name in the contract).
Standard library only: the supervisor is PID 1 of a pod and must not load torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from trainer import contract
from trainer.contract import ExitCode


@dataclasses.dataclass(frozen=True)
class Setting:
    field: str  # RunConfig's attribute, and the flag's argparse dest
    flag: str
    env: str
    type: type  # int, float, str, or bool (a switch: env "1" is on)
    default: Any
    help: str
    #: Lower bound, and whether it is exclusive (> rather than >=); NaN never passes. None: no bound.
    minimum: float | None = None
    exclusive: bool = False
    unit: str = ""  # " seconds": how the bound reads in the message
    #: The Checkpointer's name for it (a CheckpointConfig field) when every rank reads it; None: it does not.
    checkpoint: str | None = None
    #: Passed on to the ranks' environment by the supervisor.
    to_workers: bool = False
    #: Passed on only when this other setting is set (a warm start's options without a warm start mean nothing).
    with_: str | None = None

    def problem(self, value: Any, name: str | None = None) -> str | None:
        """Why `value` is out of bounds, in one line naming it `name` (default: the flag); None when it is fine."""
        if value is None or self.minimum is None:
            return None
        ok = value > self.minimum if self.exclusive else value >= self.minimum
        if ok:
            return None
        bound = f"{self.minimum:g}" if isinstance(self.minimum, float) else self.minimum
        return f"{name or self.flag} must be {'>' if self.exclusive else '>='} {bound}{self.unit}, got {value}"

    def parse(self, raw: str) -> Any:
        """A value from its environment variable (ValueError when it is not one)."""
        if self.type is bool:
            return raw == "1"
        return self.type(raw)

    def to_env(self, value: Any) -> str:
        if self.type is bool:
            return "1" if value else "0"
        return str(value)


_GRACE_MIN = contract.SUPERVISOR_GRACE_RESERVE + 1

SETTINGS: tuple[Setting, ...] = (
    Setting("nproc_per_node", "--nproc-per-node", contract.ENV_NPROC_PER_NODE, int, None,
            "worker processes on this node (default: PET_NPROC_PER_NODE from the operator, else 1)", minimum=1),
    Setting("checkpoint_uri", "--checkpoint", contract.ENV_CHECKPOINT_URI, str, contract.DEFAULT_CHECKPOINT_DIR,
            "checkpoint root: a folder or any fsspec URI (file://, s3://, gs://, memory://)",
            checkpoint="uri", to_workers=True),
    Setting("run_id", "--run-id", contract.ENV_RUN_ID, str, "default",
            "folder under the checkpoint root; reruns with the same id resume (default: the script's name)",
            checkpoint="run_id", to_workers=True),
    Setting("every_steps", "--checkpoint-every-steps", contract.ENV_CHECKPOINT_EVERY_STEPS, int,
            contract.DEFAULT_CHECKPOINT_EVERY_STEPS, "save every N steps (0: never on a step count)", minimum=0,
            checkpoint="every_steps", to_workers=True),
    Setting("every_seconds", "--checkpoint-every-seconds", contract.ENV_CHECKPOINT_EVERY_SECONDS, float, 0.0,
            "also save when this many seconds passed since the last save (0: off)", minimum=0,
            checkpoint="every_seconds", to_workers=True),
    Setting("keep", "--keep", contract.ENV_CHECKPOINT_KEEP, int, contract.DEFAULT_CHECKPOINT_KEEP,
            "committed checkpoints to keep", minimum=1, checkpoint="keep", to_workers=True),
    Setting("storage_timeout", "--storage-timeout", contract.ENV_STORAGE_TIMEOUT, float,
            contract.DEFAULT_STORAGE_TIMEOUT,
            "how long restore keeps reading a checkpoint that storage errors keep it from reading (it is not known to "
            f"be bad, so no fallback to an older step) before exiting {int(ExitCode.INFRA)} with `latest` untouched",
            minimum=0, exclusive=True, unit=" seconds", checkpoint="storage_timeout", to_workers=True),
    Setting("max_restarts", "--max-restarts", contract.ENV_MAX_RESTARTS, int, None,
            "restarts in a row without a newly committed step (preemptions do not count) before the run stops for "
            f"good with exit {int(ExitCode.CRASH_LOOP)}; each start is recorded in <checkpoint>/<run-id>/"
            f"{contract.ATTEMPTS_DIR}/ (default: no limit; `launch` sets it from its own --max-restarts)", minimum=0),
    Setting("in_place_restarts", "--in-place-restarts", contract.ENV_IN_PLACE_RESTARTS, int,
            contract.DEFAULT_IN_PLACE_RESTARTS,
            "after a lost rank (killed by a signal, a hang, a killed DataLoader worker), start the ranks again in this "
            "process from the last committed step, up to N times, before exiting retryably for the cluster to replace "
            "the pod; every node of a static multi-node job restarts together (elastic jobs exit as before). Each is an "
            "attempt in the restart ledger and counts "
            "toward --max-restarts (0: off)", minimum=0),
    Setting("cold_in_place_restarts", "--cold-in-place-restarts", contract.ENV_COLD_IN_PLACE_RESTARTS, bool, False,
            "start an in-place restart's ranks as new Pythons that import torch, not from the warm spare started "
            "ahead while the ranks train (two idle processes with torch imported: about 1.2 GB resident; "
            "the restart then pays the imports)"),
    Setting("node_copy_dir", "--node-copy-dir", contract.ENV_NODE_COPY_DIR, str, None,
            "where each rank keeps its files of the newest committed step, so that a restore on this node (an "
            "in-place restart; a new pod where the folder survives, a hostPath) reads them instead of the store, "
            "once their sha256 matches the manifest (default: kubetrain-node-copy in the spool)",
            checkpoint="node_copy_dir", to_workers=True),
    Setting("node_copy_max_bytes", "--node-copy-max-bytes", contract.ENV_NODE_COPY_MAX_BYTES, int, None,
            "the node copy's bound: a step's files beyond it are not kept (default: "
            f"{contract.DEFAULT_NODE_COPY_MAX_BYTES >> 30} GiB where something on the node reads it back, i.e. with "
            "--in-place-restarts or --node-copy-dir, else off; 0: off; a local --checkpoint folder never has one)",
            minimum=0, checkpoint="node_copy_max_bytes", to_workers=True),
    Setting("grace_seconds", "--grace-seconds", contract.ENV_GRACE_SECONDS, float, contract.DEFAULT_GRACE_SECONDS,
            "from SIGTERM to the kubelet's SIGKILL; the launcher sets the pod's terminationGracePeriodSeconds from it",
            minimum=_GRACE_MIN, to_workers=True),
    Setting("hang_timeout", "--hang-timeout", contract.ENV_HANG_TIMEOUT, float, contract.DEFAULT_HANG_TIMEOUT,
            f"kill the workers and exit {int(ExitCode.HANG)} after this many seconds without step progress (0: off)",
            minimum=0),
    Setting("preemption_url", "--preemption-url", contract.ENV_PREEMPTION_URL, str, None,
            "poll this AWS spot instance-action or GCP preempted metadata URL for a preemption notice"),
    Setting("preemption_poll_seconds", "--preemption-poll-seconds", contract.ENV_PREEMPTION_POLL_SECONDS, float,
            contract.DEFAULT_PREEMPTION_POLL_SECONDS, "how often to poll --preemption-url", minimum=0, exclusive=True),
    Setting("metrics_port", "--metrics-port", contract.ENV_METRICS_PORT, int, 0,
            "serve Prometheus metrics (step, commits, checkpoint times, restarts, goodput) at :PORT/metrics from "
            "this supervisor (0: off); a port already taken is one log line, training goes on", minimum=0),
    Setting("trainjob_status_seconds", "--trainjob-status-seconds", contract.ENV_TRAINJOB_STATUS_SECONDS, float,
            contract.DEFAULT_TRAINJOB_STATUS_SECONDS,
            "under Kubeflow Trainer with its TrainJobStatus gate on (the KUBEFLOW_TRAINER_SERVER_* variables set), "
            "node 0 posts the step, total, last committed step, goodput and ETA to the TrainJob's status at most "
            f"this often (at least every {contract.TRAINJOB_STATUS_MIN_SECONDS:g} s; 0: never); an endpoint that is "
            "slow or gone is one log line, training goes on", minimum=0),
    Setting("code_uri", "--code", contract.ENV_CODE_URI, str, None,
            "a tar.gz code bundle (path or URI) to unpack and run SCRIPT from; `launch` sets this"),
    Setting("code_sha256", "--code-sha256", contract.ENV_CODE_SHA256, str, None,
            "refuse a --code bundle with another sha256"),
    Setting("workdir", "--workdir", contract.ENV_WORKDIR, str, None, "where to unpack --code (default: a new temp dir)"),
    Setting("warm_start_from", "--warm-start-from", contract.ENV_WARM_START_FROM, str, None,
            "when this run has no checkpoint yet, load the model weights of another run's newest committed step: a "
            f"run folder URI, or '{contract.WARM_START_LATEST}' for the previous run of this run's schedule under "
            "--checkpoint", checkpoint="warm_start_from", to_workers=True),
    Setting("warm_start_optimizer", "--warm-start-optimizer", contract.ENV_WARM_START_OPTIMIZER, bool, False,
            "with --warm-start-from, restore the optimizer too (default: a fresh one)",
            checkpoint="warm_start_optimizer", to_workers=True, with_="warm_start_from"),
)
BY_FIELD: dict[str, Setting] = {s.field: s for s in SETTINGS}
#: Settings only the command line has: where the bundle came from is of no use once it is unpacked.
_CLI_ONLY = ("code_uri", "code_sha256", "workdir")

#: Everything `python -m trainer run` was asked to do (flags over KUBETRAIN_* env): the script, then one
#: field per setting above with its default. max_restarts None: no crash-loop budget.
RunConfig = dataclasses.make_dataclass(
    "RunConfig",
    [("script", str), ("script_args", tuple, dataclasses.field(default=()))]
    + [(s.field, s.type | None if s.default is None else s.type, dataclasses.field(default=s.default))
       for s in SETTINGS if s.field not in _CLI_ONLY],
    frozen=True, kw_only=True)
RunConfig.__module__ = __name__
RunConfig.__doc__ = "Everything `python -m trainer run` was asked to do (flags over KUBETRAIN_* env); see SETTINGS."


def to_worker_env(cfg: Any) -> dict[str, str]:
    """The KUBETRAIN_* variables the supervisor gives its ranks, from its RunConfig."""
    out = {}
    for s in SETTINGS:
        if not s.to_workers or (s.with_ is not None and not getattr(cfg, s.with_)):
            continue
        value = getattr(cfg, s.field)
        if value is not None and value != "":
            out[s.env] = s.to_env(value)
    return out


def from_env(env: Mapping[str, str], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The Checkpointer's settings by CheckpointConfig field: an override (not None) wins over the
    variable, the variable over the table's default. Only the fields set one of those ways are given."""
    out: dict[str, Any] = {}
    for s in SETTINGS:
        if s.checkpoint is None:
            continue
        if overrides.get(s.checkpoint) is not None:
            out[s.checkpoint] = overrides[s.checkpoint]
            continue
        raw = env.get(s.env)
        if raw not in (None, ""):
            out[s.checkpoint] = s.parse(raw)
        elif s.default is not None:
            out[s.checkpoint] = s.default
    return out


def check_checkpoint(values: Mapping[str, Any], error: Callable[[str], Exception]) -> None:
    """Raise `error(message)` for the first Checkpointer setting out of its bounds (names as CheckpointConfig's)."""
    for s in SETTINGS:
        if s.checkpoint is not None and s.checkpoint in values:
            problem = s.problem(values[s.checkpoint], name=s.checkpoint)
            if problem:
                raise error(problem)
