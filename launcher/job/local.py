"""The embedded default: `launch train.py --local` runs the same runtime on this machine.

It is `python -m trainer run` with the flags the cluster path would put in the
pod's env, checkpoints in ./checkpoints unless told otherwise, and a run id
from the script's name so that running the same command again resumes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from typing import Any, Mapping

from launcher.errors import SpecError
from launcher.job.spec import parse_env
from trainer import contract

#: Flags that only mean something on a cluster; --local refuses them rather than ignore them.
CLUSTER_ONLY = ("gpu_type", "gpu_resource", "cpu", "memory", "shm", "image", "namespace", "context", "spot",
                "priority_class", "gang", "pvc", "secret_env", "service_account", "code_dir", "code_uri",
                "max_runtime", "ttl", "clean_pod_policy", "max_restarts", "gpus_per_node", "queue", "priority")


def local_gpu_count() -> int:
    """GPUs on this machine, without importing torch (nvidia-smi, else 0)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def local_command(args: argparse.Namespace, script_args: list[str], defaults: Mapping[str, Any],
                  gpus_here: int) -> list[str]:
    """The `python -m trainer run` command for --local; SpecError for what cannot run here."""
    for flag in CLUSTER_ONLY:
        if getattr(args, flag, None) not in (None, [], False):
            raise SpecError(f"--{flag.replace('_', '-')} has no meaning with --local; drop it or drop --local")
    if args.dry_run:
        raise SpecError("--dry-run renders cluster objects; --local has none (drop one of them)")
    if args.nodes not in (None, "1"):
        raise SpecError(f"--nodes {args.nodes}: --local runs on this one machine; use --nproc for more ranks")
    gpus = args.gpus or 0
    if gpus > gpus_here:
        raise SpecError(f"--gpus {gpus} asked for, {gpus_here} GPU(s) here; use --nproc N to run N CPU ranks")
    if gpus and args.nproc is not None and args.nproc != gpus:
        raise SpecError(f"--nproc {args.nproc} differs from --gpus {gpus}; GPU runs use one rank per GPU")
    nproc = gpus or args.nproc or 1
    if nproc < 1:
        raise SpecError(f"--nproc must be >= 1, got {nproc}")
    if not os.path.isfile(args.script):
        raise SpecError(f"script {args.script!r} does not exist or is not a file")
    checkpoint = args.checkpoint or defaults.get("local_checkpoint") or defaults.get("checkpoint") \
        or contract.DEFAULT_CHECKPOINT_DIR
    problem = contract.checkpoint_uri_problem(checkpoint)  # before anything runs, as on a cluster
    if problem:
        raise SpecError(problem)
    run_id = args.name or os.path.splitext(os.path.basename(args.script))[0]
    cmd = [sys.executable, "-m", "trainer", "run", "--nproc-per-node", str(nproc), "--checkpoint", checkpoint,
           "--run-id", run_id]
    for flag in ("checkpoint_every_steps", "grace_seconds", "hang_timeout", "in_place_restarts", "metrics_port"):
        value = getattr(args, flag)
        if value is None:
            value = defaults.get(flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    parse_env(args.env)  # refuse a malformed --env before anything starts
    return cmd + [args.script, *script_args]


def run_local(args: argparse.Namespace, script_args: list[str], defaults: Mapping[str, Any]) -> int:
    cmd = local_command(args, script_args, defaults, local_gpu_count() if args.gpus else 0)
    env = {**os.environ, **dict(parse_env(args.env))}
    proc = subprocess.Popen(cmd, env=env)

    # Ctrl-C reaches the runtime directly (same terminal process group); it decides
    # what to do (checkpoint and exit 143, or kill on a second one). We only wait.
    def forward(signum: int, frame: Any) -> None:
        if signum != signal.SIGINT:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
