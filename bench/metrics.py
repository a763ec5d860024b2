"""The metrics the bench knows: one module each, in the order they run."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Metric:
    id: str
    #: The module under bench/ whose run(Context) -> dict measures it.
    module: str
    summary: str
    #: Measured at every --sizes state size (else once per bench run).
    per_size: bool = True
    #: Needs the bench's moto server.
    s3: bool = True
    #: Runs torch in its own process: pinned to one thread there, as the baselines are.
    one_thread: bool = True
    #: Metrics whose results at the same size it takes (they run first, whether asked for or not).
    needs: tuple[str, ...] = ()
    #: Part of a plain `python -m bench` (else only when named).
    default: bool = True


METRICS: tuple[Metric, ...] = (
    Metric(id="M1", module="stall", s3=False,
           summary="Checkpointer.save() blocking time vs torch.save + fsync to local disk"),
    Metric(id="M3", module="upload",
           summary="save → committed on S3 vs boto3 upload_file (and s3fs put_file, DCP FsspecWriter)"),
    Metric(id="M4", module="sigterm", one_thread=False, needs=("M3",),
           summary="SIGTERM to `trainer run` → exit 143 with the step committed, vs the bytes at boto3's rate"),
    Metric(id="M2", module="overhead", needs=("M3",),
           summary="training time with a checkpoint every K steps vs none (to S3 and to local disk)"),
    Metric(id="M5", module="restore",
           summary="restore() from S3 vs boto3 download + torch.load; restart after SIGKILL, S3 vs local disk"),
    Metric(id="M9", module="memory", summary="peak RSS growth during a save vs the state's size"),
    Metric(id="M6", module="redone", per_size=False, one_thread=False,
           summary="steps redone after a SIGTERM and after a SIGKILL of the worker"),
    Metric(id="M7", module="runtime", per_size=False, s3=False, one_thread=False,
           summary="steps/s under `trainer run` vs bare torchrun; one step_end()'s cost"),
    Metric(id="M8", module="launcher_start", per_size=False, s3=False, one_thread=False,
           summary="`launch --help` and `launch --dry-run` start time vs `python -c pass`"),
    Metric(id="in-place", module="in_place", per_size=False, s3=False, one_thread=False, default=False,
           summary="rank SIGKILL -> first step after recovery: in place (warm spare, cold) vs a new supervisor"),
    Metric(id="node-copy", module="node_copy", default=False,
           summary="restore() from the node copy vs from S3; a blocking save with and without it"),
    Metric(id="metrics-cost", module="metrics_cost", per_size=False, s3=False, one_thread=False, default=False,
           summary="steps/s with the supervisor's /metrics served and scraped every second vs off"),
    Metric(id="status-post-cost", module="status_post_cost", per_size=False, s3=False, one_thread=False,
           default=False, summary="steps/s with node 0 posting TrainJob progress every second vs off"),
    Metric(id="gpu-stall", module="gpu_stall", s3=False, one_thread=False, default=False,
           summary="M1 with the state in CUDA memory (on the CPU without one)"),
    Metric(id="status-scale", module="status_scale", per_size=False, s3=False, one_thread=False, default=False,
           summary="`launch status`/`list` at 128 to 4,096 kwok pods (needs KUBETRAIN_CLUSTER_BIN)"),
)


def find(name: str) -> Metric:
    """A metric by its id or module name, any case (M1, m1, stall; gpu-stall, gpu_stall)."""
    key = name.lower().replace("_", "-")
    for m in METRICS:
        if key in (m.id.lower(), m.module.replace("_", "-")):
            return m
    raise KeyError(name)


def plan(names: list[str]) -> list[Metric]:
    """The metrics to run for these names (all defaults if none), with what they need, in running order."""
    wanted = {find(n).id for n in names} if names else {m.id for m in METRICS if m.default}
    for m in METRICS:
        if m.id in wanted:
            wanted.update(m.needs)
    return [m for m in METRICS if m.id in wanted]
