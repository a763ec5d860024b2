"""Project defaults: `[tool.kubetrain]` in pyproject.toml, or launch.yaml, found from the working dir up.

Precedence: flags > KUBETRAIN_* env > project config > built-in defaults.
Unknown keys are errors (a typo must not be silently ignored).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from launcher.errors import SpecError
from trainer import contract

#: key → expected Python type(s); the same names as the flags, with '_' for '-'.
KEYS: dict[str, tuple[type, ...]] = {
    "image": (str,), "namespace": (str,), "context": (str,), "checkpoint": (str,),
    "checkpoint_every_steps": (int,), "grace_seconds": (int, float), "hang_timeout": (int, float),
    "metrics_port": (int,), "in_place_restarts": (int,),
    "gpus_per_node": (int,), "gpu_type": (str,), "gpu_resource": (str,), "cpu": (str, int, float),
    "memory": (str,), "shm": (str,), "spot": (str,), "priority_class": (str,), "gang": (str,),
    "max_restarts": (int,), "max_runtime": (int,), "ttl": (int,), "clean_pod_policy": (str,),
    "pvc": (list,), "secret_env": (list,), "service_account": (str,), "code_dir": (str,),
    "code_uri": (str,), "local_checkpoint": (str,), "backend": (str,), "queue": (str,), "priority": (str,),
}
ENV_KEYS = {"image": contract.ENV_IMAGE, "namespace": contract.ENV_NAMESPACE, "checkpoint": contract.ENV_CHECKPOINT_URI}


def find_config(start: str) -> str | None:
    """The nearest launch.yaml, or pyproject.toml with a [tool.kubetrain] table, from `start` upwards."""
    d = os.path.abspath(start)
    while True:
        for name in ("launch.yaml", "pyproject.toml"):
            path = os.path.join(d, name)
            if os.path.isfile(path) and (name == "launch.yaml" or _has_tool_table(path)):
                return path
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _has_tool_table(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "[tool.kubetrain]" in f.read()
    except OSError:
        return False


def load_config(path: str) -> dict[str, Any]:
    """Read and check one config file; SpecError names the file and the bad key."""
    try:
        if path.endswith(".toml"):
            import tomllib

            with open(path, "rb") as f:
                doc = tomllib.load(f).get("tool", {}).get("kubetrain", {})
        else:
            import yaml

            with open(path, encoding="utf-8") as f:
                doc = yaml.safe_load(f) or {}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    except Exception as e:  # yaml.YAMLError and friends
        raise SpecError(f"{path}: not valid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return check_config(doc, path)


def check_config(doc: Any, source: str) -> dict[str, Any]:
    if not isinstance(doc, Mapping):
        raise SpecError(f"{source}: expected a table of settings, got {type(doc).__name__}")
    out = {}
    for key, value in doc.items():
        norm = str(key).replace("-", "_")
        if norm not in KEYS:
            raise SpecError(f"{source}: unknown setting {key!r}; known: {', '.join(sorted(KEYS))}")
        if isinstance(value, bool) or not isinstance(value, KEYS[norm]):
            raise SpecError(f"{source}: {key} = {value!r} should be {' or '.join(t.__name__ for t in KEYS[norm])}")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise SpecError(f"{source}: {key} should be a list of strings")
        out[norm] = value
    return out


def merged_defaults(config: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Config values with the KUBETRAIN_* env on top; flags are applied by the caller."""
    out = dict(config)
    for key, name in ENV_KEYS.items():
        if env.get(name):
            out[key] = env[name]
    return out


def project_defaults(env: Mapping[str, str], cwd: str | None = None) -> dict[str, Any]:
    """The one load every command does: the nearest project config under the KUBETRAIN_* env."""
    path = find_config(cwd or os.getcwd())
    return merged_defaults(load_config(path) if path else {}, env)
