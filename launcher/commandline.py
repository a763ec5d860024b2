"""What every `launch` command shares: its parser, `--` splitting, where it points, how it prints objects.

The command modules (launcher/job/command.py, job/verbs.py, schedule/command.py,
chaos/command.py) build on these, so none reaches into another's internals.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Mapping, NoReturn

from launcher.errors import SpecError


class Parser(argparse.ArgumentParser):
    """argparse's usage errors as SpecError: one line and exit 2, printed by `launch`'s main."""

    def error(self, message: str) -> NoReturn:
        raise SpecError(f"{message} (see `{self.prog} --help`)")


def field_default(cls: type, field: str) -> Any:
    """A spec field's default, for help texts: the dataclass is the one place it lives."""
    return cls.__dataclass_fields__[field].default


def split_script_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launch's flags, the script's arguments): everything after the first `--` is the script's."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def add_target_flags(p: argparse.ArgumentParser) -> None:
    """-n/--namespace and --context, for commands that act on what is in a cluster."""
    p.add_argument("--namespace", "-n", default=None)
    p.add_argument("--context", default=None)


def namespace(args: argparse.Namespace, defaults: Mapping[str, Any]) -> str:
    """--namespace, else the project's or KUBETRAIN_NAMESPACE, else `default`."""
    return args.namespace or defaults.get("namespace") or "default"


def context(args: argparse.Namespace, defaults: Mapping[str, Any]) -> str | None:
    return args.context or defaults.get("context")


def dump(objects: list[dict], fmt: str) -> str:
    """The objects as `--dry-run -o yaml|json` prints them (one object: not a list)."""
    if fmt == "json":
        return json.dumps(objects if len(objects) != 1 else objects[0], indent=2, sort_keys=True)
    import yaml

    return yaml.safe_dump_all(objects, sort_keys=True)


def print_objects(objects: list[dict], fmt: str) -> None:
    print(dump(objects, fmt), end="" if fmt == "yaml" else "\n")


def print_doc(doc: Any, output: str) -> None:
    """A report (`status`, `list`, `schedule list`) as `-o json|yaml` prints it."""
    if output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
    else:
        import yaml

        print(yaml.safe_dump(json.loads(json.dumps(doc, default=str)), sort_keys=True), end="")
