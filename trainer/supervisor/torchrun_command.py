"""torchrun's command line and its workers' environment, from our flags and the operator's env (pure)."""

from __future__ import annotations

from typing import Mapping

from trainer import contract
from trainer.settings import RunConfig, to_worker_env
from trainer.supervisor.in_place import IN_PLACE_RENDEZVOUS_TIMEOUT_S, rendezvous_port


def torchrun_shutdown_timeout(grace_seconds: float) -> int:
    """torchrun's --shutdown-timeout: it must fit in the reserve after the workers' deadline."""
    return max(1, int(min(contract.SUPERVISOR_GRACE_RESERVE, grace_seconds) / 2))


def torchrun_args(cfg: RunConfig, env: Mapping[str, str], generation: int = 0) -> list[str]:
    """torchrun's arguments from our flags and the Kubeflow operator's environment.

    Elastic jobs (PET_RDZV_*) are left to torchrun, which reads PET_* itself.
    Static multi-node jobs get the master's address and port and the node rank: MASTER_ADDR/PORT
    from the training operator v1, PET_MASTER_ADDR/PORT from Kubeflow Trainer v2's Torch plugin
    (a TrainJob's pods have no MASTER_ADDR). `generation`: in-place restarts so far; after the
    first, every node meets on the port and within the timeout in_place.py gives it.
    Anything else is one node: --standalone picks a free port on loopback.
    The script and its arguments come last, after `-m trainer.worker`: torchrun_main passes them on
    without letting torchrun's parser see them.
    """
    nproc = cfg.nproc_per_node or int(env.get("PET_NPROC_PER_NODE") or 1)
    args = [f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=0.1",
            f"--shutdown-timeout={torchrun_shutdown_timeout(cfg.grace_seconds)}"]
    nnodes = env.get("PET_NNODES") or "1"
    master = env.get("MASTER_ADDR") or env.get("PET_MASTER_ADDR")
    if env.get("PET_RDZV_ENDPOINT") or env.get("PET_RDZV_BACKEND") or ":" in nnodes:
        pass
    elif master and nnodes != "1":
        port = int(env.get("MASTER_PORT") or env.get("PET_MASTER_PORT") or 29500)
        args += [f"--nnodes={nnodes}", f"--node-rank={env.get('PET_NODE_RANK') or env.get('RANK') or 0}",
                 f"--master-addr={master}", f"--master-port={rendezvous_port(port, generation)}"]
        if generation:
            args.append(f"--rdzv-conf=timeout={IN_PLACE_RENDEZVOUS_TIMEOUT_S}")
    else:
        args += ["--standalone", "--nnodes=1"]
    return args + ["-m", "trainer.worker", cfg.script, *cfg.script_args]


def node_copy_bytes(cfg: RunConfig) -> int:
    """The node copy's bound the ranks get (trainer/checkpoint/node_copy.py): on by default where an
    in-place restart of these ranks reads it back."""
    return contract.node_copy_bound(cfg.node_copy_max_bytes,
                                    read_back=bool(cfg.in_place_restarts or cfg.node_copy_dir))


def worker_env(cfg: RunConfig, base: Mapping[str, str], control_dir: str,
               prefetch_dir: str | None = None) -> dict[str, str]:
    """The environment of torchrun and its workers: ours on top of the pod's.

    The settings each rank's Checkpointer reads are the ones trainer/settings.py marks `to_workers`.
    """
    env = dict(base)
    env.pop(contract.ENV_PREFETCH_DIR, None)  # only ever this supervisor's own
    if prefetch_dir:
        env[contract.ENV_PREFETCH_DIR] = prefetch_dir
    env.update(to_worker_env(cfg))
    env[contract.ENV_NODE_COPY_MAX_BYTES] = str(node_copy_bytes(cfg))
    env.update({contract.ENV_CONTROL_DIR: control_dir, "PYTHONUNBUFFERED": "1"})
    # torchrun sets this to 1 for several ranks anyway, with a banner; same value, no banner.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
