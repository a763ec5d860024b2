"""`launch SCRIPT`: submit a training script as a job on the cluster, or run it here with --local."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any, Mapping

from launcher.commandline import Parser, field_default, print_objects, split_script_args
from launcher.errors import SpecError
from launcher.job.spec import DEFAULT_IMAGE, JobSpec, Resources
from launcher.kueue import names as kueue
from trainer import contract


def add_job_flags(p: argparse.ArgumentParser, *, name_help: str, local_help: str) -> None:
    """The flags that describe one job, on `launch` and `launch schedule` alike (so they cannot drift)."""
    p.add_argument("script", help="the training script (its folder ships with --code-dir)")
    g = p.add_argument_group("size")
    g.add_argument("--gpus", type=int, default=None, help="GPUs in total (default 0: a CPU job)")
    g.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per pod (default: min(--gpus, 8))")
    g.add_argument("--nodes", default=None, help="pods: N, or MIN:MAX for an elastic job")
    g.add_argument("--nproc", type=int, default=None, help="ranks per pod for CPU jobs (GPU jobs: one per GPU)")
    g.add_argument("--gpu-type", default=None, help="require nodes labelled nvidia.com/gpu.product=TYPE")
    g.add_argument("--gpu-resource", default=None, help="GPU resource name, e.g. nvidia.com/mig-1g.10gb "
                   f"(default {field_default(Resources, 'gpu_resource')})")
    g.add_argument("--cpu", default=None, help="CPU request per pod (e.g. 8)")
    g.add_argument("--memory", default=None, help="memory request and limit per pod (e.g. 64Gi)")
    g.add_argument("--shm", default=None, help=f"/dev/shm size per pod (default {field_default(Resources, 'shm')})")
    g = p.add_argument_group("where")
    g.add_argument("--local", action="store_true", help=local_help)
    g.add_argument("--image", default=None, help=f"runtime image (default {DEFAULT_IMAGE}; env {contract.ENV_IMAGE})")
    g.add_argument("--namespace", "-n", default=None, help=f"namespace (env {contract.ENV_NAMESPACE})")
    g.add_argument("--context", default=None, help="kubeconfig context")
    g.add_argument("--name", default=None, help=name_help)
    g.add_argument("--code-dir", default=None, help="ship this folder (with .gitignore honoured), not only SCRIPT")
    g.add_argument("--code-uri", default=None, help="object-store prefix for code bundles too big for a ConfigMap")
    g = p.add_argument_group("checkpoints and faults")
    g.add_argument("--checkpoint", default=None, help="checkpoint URI, e.g. s3://bucket/ckpts "
                   f"(--local default: ./{contract.DEFAULT_CHECKPOINT_DIR}; env {contract.ENV_CHECKPOINT_URI})")
    g.add_argument("--checkpoint-every-steps", type=int, default=None,
                   help=f"default {contract.DEFAULT_CHECKPOINT_EVERY_STEPS}")
    g.add_argument("--grace-seconds", type=float, default=None, help="SIGTERM to SIGKILL; sets the pods' "
                   f"terminationGracePeriodSeconds (default {contract.DEFAULT_GRACE_SECONDS:.0f})")
    g.add_argument("--hang-timeout", type=float, default=None, help="exit retryably after this many seconds "
                   "without step progress (default off)")
    g.add_argument("--in-place-restarts", type=int, default=None, help="restart a lost rank (killed, hung) inside "
                   "its pod from the last checkpoint up to N times before the pod is replaced; every node restarts "
                   "together; not for elastic jobs (default 0: off)")
    g.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics from each pod's "
                   "runtime on this port, named 'metrics' for a PodMonitor (default 0: off)")
    g.add_argument("--max-restarts", type=int, default=None,
                   help=f"operator retries (backoffLimit; default {field_default(JobSpec, 'max_restarts')})")
    g.add_argument("--max-runtime", type=int, default=None, help="activeDeadlineSeconds")
    g.add_argument("--ttl", type=int, default=None,
                   help=f"ttlSecondsAfterFinished (default {field_default(JobSpec, 'ttl_seconds_after_finished')})")
    g.add_argument("--clean-pod-policy", default=None, choices=("None", "Running", "All"))
    g = p.add_argument_group("scheduling")
    g.add_argument("--spot", nargs="?", const="prefer", default=None, choices=("prefer", "require"),
                   help="run on spot capacity (EKS, Karpenter, GKE, AKS labels/taints); bare --spot = prefer")
    g.add_argument("--priority-class", default=None, help="a Kubernetes PriorityClass for the pods "
                   "(scheduling and preemption by the kube-scheduler)")
    g.add_argument("--gang", default=None, choices=("volcano", "scheduler-plugins"), help="gang-schedule all pods "
                   "(not with --queue)")
    g.add_argument("--queue", default=None, metavar="LOCALQUEUE", help="submit through Kueue: the LocalQueue in "
                   f"the namespace (label {kueue.QUEUE_LABEL}); Kueue starts the job when its quota admits "
                   "all pods. Config key: queue")
    g.add_argument("--priority", default=None, metavar="NAME", help="with --queue: a Kueue WorkloadPriorityClass "
                   f"(label {kueue.PRIORITY_LABEL}; the order in the queue and Kueue's preemption), not a "
                   "Kubernetes PriorityClass. Config key: priority")
    g = p.add_argument_group("pod")
    g.add_argument("--pvc", action="append", default=None, help="NAME:/PATH[:ro], repeatable")
    g.add_argument("--secret-env", action="append", default=None, help="Secret whose keys become env, repeatable")
    g.add_argument("--env", action="append", default=[], help="NAME=VALUE, repeatable")
    g.add_argument("--service-account", default=None)
    g = p.add_argument_group("output")
    g.add_argument("--dry-run", action="store_true", help="print every object, create nothing")
    g.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="format for --dry-run")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="launch", description="Run a PyTorch training script on Kubernetes as a PyTorchJob or a "
               "TrainJob (--backend), or here with --local. Script arguments go after `--`.", epilog="other verbs: launch status JOB | logs JOB "
               "[-f] | cancel JOB | list | schedule ... | chaos ...  (each has --help)",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_flags(p, name_help="job name (default: SCRIPT-YYYYmmdd-HHMMSS; --local: SCRIPT)",
                  local_help="run here under `python -m trainer run`, no cluster")
    p.add_argument("--backend", default=None, help="the job kind: pytorchjob (Kubeflow training operator v1, "
                   "the default), trainjob (Kubeflow Trainer v2), or auto (what the cluster serves; PyTorchJob "
                   "when it serves both, unless the project config's backend says trainjob). Config key: backend")
    return p


def choose_backend(args: argparse.Namespace, defaults: Mapping[str, Any], connect: Any) -> Any:
    """--backend, else the config's `backend`, else pytorchjob; `auto` asks the cluster (one discovery call).

    With --dry-run, `auto` asks nothing (it works offline): it renders the config's backend, else PyTorchJob.
    """
    from launcher import backends

    configured = defaults.get("backend")
    if configured is not None:
        backends.check_choice(configured, "config backend")
    choice = backends.check_choice(args.backend if args.backend is not None else (configured or "pytorchjob"))
    if choice != "auto":
        return backends.BACKENDS[choice]
    prefer = configured if configured in backends.BACKENDS else None
    if args.dry_run:
        return backends.BACKENDS[prefer or backends.DEFAULT_NAME]
    from launcher.k8s.discovery import served_crds

    return backends.pick(served_crds(connect()), prefer)


def default_name(script: str, now: float) -> str:
    """SCRIPT-YYYYmmdd-HHMMSS as a DNS label; the caller passes the clock."""
    stem = re.sub(r"[^a-z0-9-]+", "-", os.path.splitext(os.path.basename(script))[0].lower()).strip("-") or "job"
    return f"{stem[:40]}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}"


def flag_or_default(args: argparse.Namespace, defaults: Mapping[str, Any], dest: str) -> Any:
    """A flag's value, else the project default's, else None (not asked for)."""
    v = getattr(args, dest)
    return v if v is not None else defaults.get(dest)


def build_spec(args: argparse.Namespace, script_args: list[str], defaults: Mapping[str, Any]) -> JobSpec:
    """Flags over project defaults → a validated JobSpec."""
    from launcher.job.spec import Volume, parse_env, parse_nodes, split_gpus, split_over_nodes

    def pick(flag: str) -> Any:
        return flag_or_default(args, defaults, flag)

    gpus = args.gpus or 0
    per_flag = pick("gpus_per_node")
    min_nodes, nodes = parse_nodes(args.nodes) if args.nodes is not None else (None, None)
    if nodes is not None and nodes < 1:
        raise SpecError(f"--nodes must be >= 1, got {args.nodes}")
    if gpus and nodes is not None:
        per = split_over_nodes(gpus, min_nodes, nodes, per_flag)
    elif gpus:
        nodes, per = split_gpus(gpus, per_flag)
    else:
        nodes, per = nodes or 1, (per_flag or 0)
    nproc = per if per else (args.nproc or 1)
    if per and args.nproc is not None and args.nproc != per:
        raise SpecError(f"--nproc {args.nproc} differs from --gpus-per-node {per}; GPU jobs run one rank per GPU")
    cpu = pick("cpu")

    def given(**kw: Any) -> dict[str, Any]:
        # Only what was asked for: every default lives once, on the spec dataclasses.
        return {k: v for k, v in kw.items() if v is not None}

    resources = Resources(gpus_per_node=per, **given(
        gpu_resource=pick("gpu_resource"), gpu_type=pick("gpu_type"), cpu=str(cpu) if cpu is not None else None,
        memory=pick("memory"), shm=pick("shm")))
    return JobSpec(
        script=args.script, script_args=tuple(script_args), nodes=nodes, min_nodes=min_nodes, nproc_per_node=nproc,
        resources=resources,
        volumes=tuple(Volume.parse(v) for v in (pick("pvc") or [])),
        secret_env=tuple(pick("secret_env") or []), env=parse_env(args.env),
        **given(image=pick("image"), namespace=pick("namespace"), checkpoint_uri=pick("checkpoint"),
                checkpoint_every_steps=pick("checkpoint_every_steps"), grace_seconds=pick("grace_seconds"),
                hang_timeout=pick("hang_timeout"), in_place_restarts=pick("in_place_restarts"),
                metrics_port=pick("metrics_port"), spot=pick("spot"), priority_class=pick("priority_class"),
                gang=pick("gang"), max_restarts=pick("max_restarts"), active_deadline_seconds=pick("max_runtime"),
                ttl_seconds_after_finished=pick("ttl"), clean_pod_policy=pick("clean_pod_policy"),
                service_account=pick("service_account"), queue=pick("queue"),
                workload_priority=pick("priority")))


def pack_code(args: argparse.Namespace, defaults: Mapping[str, Any], script: str, name: str):
    """(bundle, CodeRef) for --code-dir/--code-uri or their project defaults (launcher/job/bundle.py)."""
    from launcher.job import bundle

    return bundle.pack(script, name=name, code_dir=args.code_dir or defaults.get("code_dir"),
                       code_uri=args.code_uri or defaults.get("code_uri"))


def main(argv: list[str], env: Mapping[str, str], now: float | None = None) -> int:
    """`launch SCRIPT [flags] [-- script args]`; raises KubetrainError for bad input (launch's main prints it)."""
    from launcher.config import project_defaults

    flags, script_args = split_script_args(argv)
    args = build_parser().parse_args(flags)
    defaults = project_defaults(env)
    if args.local:
        from launcher.job.local import run_local

        return run_local(args, script_args, defaults)
    api_box: list = []

    def connect() -> Any:  # once, when first needed: --dry-run never connects
        if not api_box:
            from launcher.k8s import api as k8s

            api_box.append(k8s.connect(context=args.context or defaults.get("context")))
        return api_box[0]

    backend = choose_backend(args, defaults, connect)
    spec = build_spec(args, script_args, defaults)
    from launcher import backends

    for line in backends.ignored(backend, {d: flag_or_default(args, defaults, d) for d in backend.IGNORED_FLAGS}):
        print(line, file=sys.stderr)
    name = args.name or default_name(spec.script, time.time() if now is None else now)
    from launcher.job.spec import check_dns_label

    check_dns_label(name, "--name", max_len=52)  # the operator appends -master-0 / -worker-N to it
    from launcher.job.render import spec_to_objects

    bundle, code = pack_code(args, defaults, spec.script, name)
    objects = spec_to_objects(spec, name=name, code=code, image=spec.image or DEFAULT_IMAGE, backend=backend)
    if args.dry_run:
        print_objects(objects, args.output)
        return 0
    from launcher.job import bundle as shipping
    from launcher.job.bucket_lifecycle import warn_without_abort_rule
    from launcher.k8s.jobs import create_job
    from launcher.k8s.kueue_preflight import managed_probe
    from launcher.k8s.preflight import preflight

    api = connect()
    preflight(api, spec, backend, objects[0])
    warn_without_abort_rule(spec.checkpoint_uri)  # one line on stderr, never fatal
    # With --queue, a dry run of the job first: Kueue must suspend it, or it would run outside quota.
    probe = managed_probe(backend) if spec.queue else None
    shipping.shipped_then_created(code, bundle.data, lambda: create_job(api, spec.namespace, objects, probe=probe))
    print(f"created {objects[0]['kind']} {spec.namespace}/{name}: {spec.nodes} pod(s) x "
          f"{spec.resources.gpus_per_node or spec.nproc_per_node} {'GPU' if spec.resources.gpus_per_node else 'rank'}(s)")
    if spec.queue:
        print(f"  queued in LocalQueue {spec.queue}: suspended until Kueue admits all its pods")
    print(f"  launch status {name} -n {spec.namespace}   |   launch logs {name} -n {spec.namespace} -f")
    return 0
