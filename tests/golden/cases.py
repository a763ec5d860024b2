"""The flag combinations behind tests/golden/*.yaml: one table, read by the regenerator and the tests."""

from __future__ import annotations

#: `launch SCRIPT --dry-run` cases (tests/golden/launch/CASE.yaml); every case adds LAUNCH_BASE.
LAUNCH_BASE = ["--checkpoint", "s3://bucket/ckpts", "--name", "job-a"]
LAUNCH = {
    "one-node-8-gpus": ["--gpus", "8"],
    "two-nodes": ["--gpus", "16", "--gpus-per-node", "8"],
    "mig": ["--gpus", "2", "--gpu-resource", "nvidia.com/mig-1g.10gb"],
    "gpu-type-spot-require": ["--gpus", "8", "--gpu-type", "NVIDIA-H100-80GB-HBM3", "--spot", "require"],
    "spot-prefer": ["--gpus", "8", "--spot"],
    "cpu-job": ["--nodes", "2", "--nproc", "4", "--cpu", "4", "--memory", "8Gi"],
    "elastic": ["--gpus", "32", "--gpus-per-node", "8", "--nodes", "2:4"],
    "gang-volcano": ["--gpus", "16", "--gang", "volcano", "--priority-class", "spot-training"],
    "gang-scheduler-plugins": ["--gpus", "16", "--gang", "scheduler-plugins"],
    "pvc-secret-shm": ["--gpus", "8", "--pvc", "data:/data:ro", "--pvc", "scratch:/scratch", "--secret-env", "aws-creds",
                       "--shm", "16Gi", "--env", "NCCL_DEBUG=INFO"],
    "policies": ["--gpus", "8", "--max-restarts", "10", "--max-runtime", "86400", "--ttl", "3600",
                 "--clean-pod-policy", "All", "--grace-seconds", "90", "--hang-timeout", "600"],
    "pvc-checkpoint": ["--gpus", "1", "--pvc", "ckpt:/ckpt", "--checkpoint", "/ckpt/runs"],
    # Kueue: its labels on the job object only, and no suspend (Kueue's webhook sets that).
    "kueue-queue-priority": ["--gpus", "16", "--gpus-per-node", "8", "--queue", "team-a", "--priority", "high"],
}

#: The same cases with `--backend trainjob` (tests/golden/launch-trainjob/CASE.yaml), but the elastic one:
#: a TrainJob on our runtime has a fixed size (launch refuses --nodes MIN:MAX for it).
TRAINJOB_BASE = ["--backend", "trainjob"]
LAUNCH_TRAINJOB = {case: flags for case, flags in LAUNCH.items() if case != "elastic"}

#: `launch schedule SCRIPT --dry-run` cases (tests/golden/schedule/CASE.yaml, and the objects the in-cluster
#: submitter creates for run RUN_NAME of each: tests/golden/schedule-run/CASE.yaml).
SCHEDULE_BASE = ["--checkpoint", "s3://bucket/ckpts", "--name", "nightly", "--cron", "0 3 * * *"]
SCHEDULE = {
    "eight-gpus": ["--gpus", "8"],
    "time-zone-warm-start": ["--gpus", "16", "--time-zone", "Europe/Berlin", "--warm-start-from", "latest"],
    "warm-start-optimizer-from-uri": ["--gpus", "8", "--warm-start-from", "s3://bucket/ckpts/base-29000000",
                                      "--warm-start-optimizer"],
    "cpu-macro-history": ["--nodes", "2", "--nproc", "2", "--cron", "@daily", "--keep-history", "5",
                          "--starting-deadline", "600"],
    "spot-secret-pvc": ["--gpus", "8", "--spot", "--secret-env", "aws-creds", "--pvc", "data:/data:ro"],
    "kueue-queue": ["--gpus", "8", "--queue", "team-a", "--priority", "low"],
}
RUN_NAME, RUN_NAMESPACE = "nightly-29403360", "team-a"
#: `launch schedule ... --chart-values` (tests/golden/chart-values/CASE.yaml).
CHART_VALUES = ("time-zone-warm-start",)
SCRIPT_ARGS = ["--", "--steps", "5"]
