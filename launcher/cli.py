"""`launch`: submit a training script as a PyTorchJob, or run it here with --local.

    launch train.py --gpus 8                       # 1 node x 8 GPUs
    launch train.py --gpus 16 --gpus-per-node 8    # 2 nodes x 8
    launch train.py --local --nproc 2              # this machine, no cluster
    launch train.py --gpus 8 --dry-run -o yaml     # every object it would create
    launch status JOB | logs JOB [-f] | cancel JOB | list
    launch schedule train.py --cron "0 3 * * *" --gpus 8   # a CronJob that submits it (see --help)
    launch chaos train.py --local --faults 5        # prove it resumes exactly; or chaos JOB --kill-pod ...

Arguments for the script go after `--`. Bad input is one line on stderr and
exit 2, before anything is created.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, Mapping, NoReturn

from launcher.errors import KubetrainError, SpecError
from launcher.spec import JobSpec, Resources
from trainer import contract
from trainer.errors import one_line

VERBS = ("status", "logs", "cancel", "list")
# Verbs with a module (and parser) of their own, imported only when used so `launch --help` stays fast.
# Each module has `main(argv, env) -> int` and raises KubetrainError for bad input.
MODULE_VERBS = {"schedule": "launcher.schedule", "chaos": "launcher.chaos"}
DEFAULT_IMAGE = "kubetrain/runtime:0.1.0"  # built from images/Dockerfile


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SpecError(f"{message} (see `{self.prog} --help`)")


def _default(cls: type, field: str) -> Any:
    """A spec field's default, for help texts: the dataclass is the one place it lives."""
    return cls.__dataclass_fields__[field].default


def _submit_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="launch", description="Run a PyTorch training script on Kubernetes as a PyTorchJob, or here "
                "with --local. Script arguments go after `--`.", epilog="other verbs: launch status JOB | logs JOB "
                "[-f] | cancel JOB | list | schedule ... | chaos ...  (each has --help)",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("script", help="the training script (its folder ships with --code-dir)")
    g = p.add_argument_group("size")
    g.add_argument("--gpus", type=int, default=None, help="GPUs in total (default 0: a CPU job)")
    g.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per pod (default: min(--gpus, 8))")
    g.add_argument("--nodes", default=None, help="pods: N, or MIN:MAX for an elastic job")
    g.add_argument("--nproc", type=int, default=None, help="ranks per pod for CPU jobs (GPU jobs: one per GPU)")
    g.add_argument("--gpu-type", default=None, help="require nodes labelled nvidia.com/gpu.product=TYPE")
    g.add_argument("--gpu-resource", default=None, help="GPU resource name, e.g. nvidia.com/mig-1g.10gb "
                   f"(default {_default(Resources, 'gpu_resource')})")
    g.add_argument("--cpu", default=None, help="CPU request per pod (e.g. 8)")
    g.add_argument("--memory", default=None, help="memory request and limit per pod (e.g. 64Gi)")
    g.add_argument("--shm", default=None, help=f"/dev/shm size per pod (default {_default(Resources, 'shm')})")
    g = p.add_argument_group("where")
    g.add_argument("--local", action="store_true", help="run here under `python -m trainer run`, no cluster")
    g.add_argument("--image", default=None, help=f"runtime image (default {DEFAULT_IMAGE}; env {contract.ENV_IMAGE})")
    g.add_argument("--namespace", "-n", default=None, help=f"namespace (env {contract.ENV_NAMESPACE})")
    g.add_argument("--context", default=None, help="kubeconfig context")
    g.add_argument("--name", default=None, help="job name (default: SCRIPT-YYYYmmdd-HHMMSS; --local: SCRIPT)")
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
    g.add_argument("--max-restarts", type=int, default=None, help=f"operator retries (backoffLimit; default {_default(JobSpec, 'max_restarts')})")
    g.add_argument("--max-runtime", type=int, default=None, help="activeDeadlineSeconds")
    g.add_argument("--ttl", type=int, default=None, help=f"ttlSecondsAfterFinished (default {_default(JobSpec, 'ttl_seconds_after_finished')})")
    g.add_argument("--clean-pod-policy", default=None, choices=("None", "Running", "All"))
    g = p.add_argument_group("scheduling")
    g.add_argument("--spot", nargs="?", const="prefer", default=None, choices=("prefer", "require"),
                   help="run on spot capacity (EKS, Karpenter, GKE, AKS labels/taints); bare --spot = prefer")
    g.add_argument("--priority-class", default=None)
    g.add_argument("--gang", default=None, choices=("volcano", "scheduler-plugins"), help="gang-schedule all pods")
    g = p.add_argument_group("pod")
    g.add_argument("--pvc", action="append", default=None, help="NAME:/PATH[:ro], repeatable")
    g.add_argument("--secret-env", action="append", default=None, help="Secret whose keys become env, repeatable")
    g.add_argument("--env", action="append", default=[], help="NAME=VALUE, repeatable")
    g.add_argument("--service-account", default=None)
    g = p.add_argument_group("output")
    g.add_argument("--dry-run", action="store_true", help="print every object, create nothing")
    g.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="format for --dry-run")
    return p


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"launch {verb}")
    if verb != "list":
        p.add_argument("job", help="the job name `launch` printed")
    if verb == "logs":
        p.add_argument("-f", "--follow", action="store_true", help="keep streaming; wait for pending pods")
    if verb in ("status", "list"):
        p.add_argument("-o", "--output", choices=("text", "json", "yaml", "wide"), default="text",
                       help="text (default), json, yaml, or wide" + (" (every pod)" if verb == "status" else ""))
    if verb == "status":
        p.add_argument("--pods", action="store_true", help="list every pod, not only those that are not healthy")
    p.add_argument("--namespace", "-n", default=None)
    p.add_argument("--context", default=None)
    return p


def split_script_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def default_name(script: str, now: float) -> str:
    """SCRIPT-YYYYmmdd-HHMMSS as a DNS label; the caller passes the clock."""
    stem = re.sub(r"[^a-z0-9-]+", "-", os.path.splitext(os.path.basename(script))[0].lower()).strip("-") or "job"
    return f"{stem[:40]}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}"


def build_spec(args: argparse.Namespace, script_args: list[str], defaults: Mapping[str, Any]):
    """Flags over project defaults → a validated JobSpec."""
    from launcher.spec import Volume, parse_env, parse_nodes, split_gpus, split_over_nodes

    def pick(flag: str) -> Any:
        v = getattr(args, flag)
        return v if v is not None else defaults.get(flag)

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
                hang_timeout=pick("hang_timeout"), spot=pick("spot"), priority_class=pick("priority_class"),
                gang=pick("gang"), max_restarts=pick("max_restarts"), active_deadline_seconds=pick("max_runtime"),
                ttl_seconds_after_finished=pick("ttl"), clean_pod_policy=pick("clean_pod_policy"),
                service_account=pick("service_account")))


def pack_code(args: argparse.Namespace, defaults: Mapping[str, Any], script: str, name: str):
    """(bundle, CodeRef): the code in a ConfigMap, or under --code-uri when it is too big for one."""
    from launcher.code import make_bundle
    from launcher.render import CodeRef

    bundle = make_bundle(script, code_dir=args.code_dir or defaults.get("code_dir"))
    code_uri = None
    if not bundle.fits_configmap:
        prefix = args.code_uri or defaults.get("code_uri")
        if not prefix:
            raise SpecError(f"the code bundle is {len(bundle.data) // 1024} KiB, over the ConfigMap limit; pass "
                            "--code-uri s3://BUCKET/PREFIX to ship it through the object store, or shrink --code-dir")
        code_uri = f"{prefix.rstrip('/')}/{name}/{bundle.sha256[:16]}.tar.gz"
    return bundle, CodeRef(sha256=bundle.sha256, entrypoint=bundle.entrypoint,
                           configmap_data=bundle.data if code_uri is None else None, uri=code_uri)


def _dump(objects: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(objects if len(objects) != 1 else objects[0], indent=2, sort_keys=True)
    import yaml

    return yaml.safe_dump_all(objects, sort_keys=True)


def submit(argv: list[str], env: Mapping[str, str], now: float) -> int:
    flags, script_args = split_script_args(argv)
    args = _submit_parser().parse_args(flags)
    from launcher.config import find_config, load_config, merged_defaults

    config_path = find_config(os.getcwd())
    defaults = merged_defaults(load_config(config_path) if config_path else {}, env)
    if args.local:
        from launcher.local import run_local

        return run_local(args, script_args, defaults)
    spec = build_spec(args, script_args, defaults)
    name = args.name or default_name(spec.script, now)
    from launcher.spec import check_dns_label

    check_dns_label(name, "--name", max_len=52)  # the operator appends -master-0 / -worker-N to it
    from launcher.render import spec_to_objects

    bundle, code = pack_code(args, defaults, spec.script, name)
    code_uri = code.uri
    objects = spec_to_objects(spec, name=name, code=code, image=spec.image or DEFAULT_IMAGE)
    if args.dry_run:
        print(_dump(objects, args.output), end="" if args.output == "yaml" else "\n")
        return 0
    from launcher import client

    api = client.connect(context=args.context or defaults.get("context"))
    client.preflight(api, spec)
    from launcher.bucket_lifecycle import warn_without_abort_rule

    warn_without_abort_rule(spec.checkpoint_uri)  # one line on stderr, never fatal
    if code_uri:
        client.upload_bundle(code_uri, bundle.data)
    try:
        client.create_all(api, spec.namespace, objects)
    except BaseException:
        if code_uri:  # nothing half-created: not on the cluster, not in the bucket
            client.remove_bundle(code_uri)
        raise
    print(f"created PyTorchJob {spec.namespace}/{name}: {spec.nodes} pod(s) x "
          f"{spec.resources.gpus_per_node or spec.nproc_per_node} {'GPU' if spec.resources.gpus_per_node else 'rank'}(s)")
    print(f"  launch status {name} -n {spec.namespace}   |   launch logs {name} -n {spec.namespace} -f")
    return 0


def run_verb(verb: str, argv: list[str], env: Mapping[str, str]) -> int:
    args = _verb_parser(verb).parse_args(argv)
    from launcher import client
    from launcher.config import find_config, load_config, merged_defaults

    config_path = find_config(os.getcwd())
    defaults = merged_defaults(load_config(config_path) if config_path else {}, env)
    namespace = args.namespace or defaults.get("namespace") or "default"
    api = client.connect(context=args.context or defaults.get("context"))
    if verb == "status":
        return client.print_status(api, namespace, args.job, output=args.output, all_pods=args.pods)
    if verb == "logs":
        return client.stream_logs(api, namespace, args.job, follow=args.follow)
    if verb == "cancel":
        return client.cancel(api, namespace, args.job)
    return client.print_list(api, namespace, output=args.output)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            _submit_parser().print_help()
            return 0 if argv else int(contract.ExitCode.USAGE)
        if argv[0] in VERBS:
            return run_verb(argv[0], argv[1:], os.environ)
        if argv[0] in MODULE_VERBS:
            import importlib

            return importlib.import_module(MODULE_VERBS[argv[0]]).main(argv[1:], os.environ)
        return submit(argv, os.environ, time.time())
    except KubetrainError as e:
        print(f"launch: error: {one_line(str(e))}", file=sys.stderr)
        return int(contract.ExitCode.USAGE) if isinstance(e, SpecError) else 1
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:  # argparse's -h/--help (anywhere in the flags) printed the help: main returns, never exits
        return e.code if isinstance(e.code, int) else (0 if e.code is None else int(contract.ExitCode.USAGE))


if __name__ == "__main__":
    sys.exit(main())
