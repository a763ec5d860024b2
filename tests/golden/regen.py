"""Render every golden manifest; write them (review the diff), or check them.

    python -m tests.golden.regen           # rewrite tests/golden/{launch,launch-trainjob,schedule,schedule-run,chart-values}/*.yaml
    python -m tests.golden.regen --check   # exit 1 naming each stale file (tests/unit/test_golden_manifests.py)

Each file is what `launch` prints for one case of tests/golden/cases.py, run as a user would
(`launch ... --dry-run -o yaml`) from tests/golden/, whose empty launch.yaml keeps any project
config above it out, with no KUBETRAIN_* variable set. schedule-run/ holds the objects the
in-cluster submitter creates for one run, read back from the schedule's stored spec.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sys
from typing import Iterator

import yaml

from tests.golden import cases

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = "train.py"  # relative: the stored schedule spec keeps the path as given


@contextlib.contextmanager
def _hermetic() -> Iterator[None]:
    """cwd tests/golden/ and no KUBETRAIN_* variable, for as long as one rendering takes."""
    from trainer import contract

    cwd, saved = os.getcwd(), {k: v for k, v in os.environ.items() if k.startswith(contract.ENV_PREFIX)}
    os.chdir(HERE)
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.chdir(cwd)
        os.environ.update(saved)


def launch(argv: list[str]) -> str:
    """What `launch ARGV` prints on stdout; AssertionError with its stderr unless it exits 0."""
    from launcher.cli import main

    out, err = io.StringIO(), io.StringIO()
    with _hermetic(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, f"launch {' '.join(argv)}: exit {code}: {err.getvalue()}"
    return out.getvalue()


def _run_objects(schedule_yaml: str) -> str:
    from launcher.schedule.render import run_to_objects
    from launcher.schedule.spec import stored_from_dict
    from trainer import contract

    cm = next(o for o in yaml.safe_load_all(schedule_yaml) if o["kind"] == "ConfigMap")
    code = base64.b64decode(cm["binaryData"][contract.CODE_BUNDLE_NAME]) if "binaryData" in cm else None
    stored = stored_from_dict(json.loads(cm["data"]["schedule.json"]), code_data=code)
    objects = run_to_objects(stored, run_name=cases.RUN_NAME, namespace=cases.RUN_NAMESPACE)
    return yaml.safe_dump_all(objects, sort_keys=True)


def render() -> dict[str, str]:
    """Path under tests/golden/ -> its text, for every case."""
    out = {}
    for case, flags in cases.LAUNCH.items():
        out[f"launch/{case}.yaml"] = launch([SCRIPT, *cases.LAUNCH_BASE, *flags, "--dry-run", *cases.SCRIPT_ARGS])
    for case, flags in cases.LAUNCH_TRAINJOB.items():
        out[f"launch-trainjob/{case}.yaml"] = launch([SCRIPT, *cases.LAUNCH_BASE, *cases.TRAINJOB_BASE, *flags,
                                                      "--dry-run", *cases.SCRIPT_ARGS])
    for case, flags in cases.SCHEDULE.items():
        argv = ["schedule", SCRIPT, *cases.SCHEDULE_BASE, *flags]
        out[f"schedule/{case}.yaml"] = text = launch([*argv, "--dry-run", *cases.SCRIPT_ARGS])
        out[f"schedule-run/{case}.yaml"] = _run_objects(text)
        if case in cases.CHART_VALUES:
            out[f"chart-values/{case}.yaml"] = launch([*argv, "--chart-values", *cases.SCRIPT_ARGS])
    return out


def stale(rendered: dict[str, str] | None = None) -> list[str]:
    """Golden files that differ from what the code renders now (or are missing)."""
    out = []
    for rel, text in (rendered or render()).items():
        try:
            with open(os.path.join(HERE, rel), encoding="utf-8") as f:
                if f.read() == text:
                    continue
        except FileNotFoundError:
            pass
        out.append(rel)
    return out


def main(argv: list[str]) -> int:
    rendered = render()
    if argv == ["--check"]:
        names = stale(rendered)
        for rel in names:
            print(f"tests/golden/{rel} is stale: run `python -m tests.golden.regen` and review the diff", file=sys.stderr)
        return 1 if names else 0
    if argv:
        print("usage: python -m tests.golden.regen [--check]", file=sys.stderr)
        return 2
    for rel, text in rendered.items():
        path = os.path.join(HERE, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    print(f"wrote {len(rendered)} files under tests/golden/; review them with `git diff tests/golden`")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
