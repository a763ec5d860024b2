"""`launch` preflight: warn when an s3 checkpoint bucket has no rule that aborts incomplete multipart uploads.

A SIGKILL during the upload of a large checkpoint file leaves its parts in the bucket, billed, until
a lifecycle rule with AbortIncompleteMultipartUpload removes them; the runtime aborts what it can
(every failure it lives through, and at start what an earlier attempt left under the run's folder),
but only the bucket can catch everything. One line, never fatal, with the one command that adds it.
"""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any, Mapping

from launcher import objectstore

RULE_ID = "kubetrain-abort-incomplete-uploads"
DAYS = 1


def split_s3_uri(uri: str | None) -> tuple[str, str] | None:
    """(bucket, key prefix) of an s3:// or s3a:// URI; None for any other URI."""
    if not uri or not (uri.startswith("s3://") or uri.startswith("s3a://")):
        return None
    bucket, _, prefix = uri.split("://", 1)[1].partition("/")
    return (bucket, prefix.strip("/") + "/" if prefix.strip("/") else "") if bucket else None


def _rule_prefix(rule: Mapping[str, Any]) -> str | None:
    """The key prefix a rule applies to ('' for all keys); None when its filter also needs tags or sizes."""
    if "Prefix" in rule and "Filter" not in rule:  # the deprecated top-level form
        return str(rule.get("Prefix") or "")
    f = rule.get("Filter") or {}
    if not f:
        return ""
    if set(f) == {"Prefix"}:
        return str(f["Prefix"] or "")
    return None  # Tag / And / ObjectSize*: incomplete uploads have no tags, so such a rule may miss them


def aborts_incomplete_uploads(rules: list[Mapping[str, Any]], key_prefix: str) -> bool:
    """Whether an enabled rule aborts incomplete multipart uploads of every key under `key_prefix`."""
    for rule in rules:
        if rule.get("Status") != "Enabled" or not (rule.get("AbortIncompleteMultipartUpload") or {}).get(
                "DaysAfterInitiation"):
            continue
        prefix = _rule_prefix(rule)
        if prefix is not None and key_prefix.startswith(prefix):
            return True
    return False


def add_rule_command(bucket: str, key_prefix: str) -> str:
    rule = {"ID": RULE_ID, "Status": "Enabled", "Filter": {"Prefix": key_prefix},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": DAYS}}
    config = json.dumps({"Rules": [rule]}, separators=(",", ":"))
    return (f"aws s3api put-bucket-lifecycle-configuration --bucket {shlex.quote(bucket)} "
            f"--lifecycle-configuration {shlex.quote(config)}")


def warning(uri: str, rules: list[Mapping[str, Any]]) -> str | None:
    """The preflight's one line for a bucket with these lifecycle rules; None when it has the rule."""
    where = split_s3_uri(uri)
    if where is None or aborts_incomplete_uploads(rules, where[1]):
        return None
    bucket, prefix = where
    kept = (f" (the command replaces the bucket's {len(rules)} lifecycle rule(s): add this one to them instead)"
            if rules else "")
    return (f"launch: warning: bucket s3://{bucket} has no lifecycle rule that aborts incomplete multipart uploads"
            f"{' under ' + prefix if prefix else ''}: a checkpoint upload cut short by a SIGKILL stays billed until "
            f"one exists; add it with: {add_rule_command(bucket, prefix)}{kept}")


def bucket_rules(bucket: str, client: Any = None) -> list[dict] | None:
    """The bucket's lifecycle rules ([] for none); None when they cannot be read (no permission, no network)."""
    return objectstore.lifecycle_rules(bucket, client)


def warn_without_abort_rule(uri: str | None, client: Any = None) -> str | None:
    """Print the warning for an s3:// checkpoint URI whose bucket lacks the rule; never raises."""
    where = split_s3_uri(uri)
    if where is None:
        return None
    rules = bucket_rules(where[0], client)
    line = warning(uri, rules) if rules is not None else None  # type: ignore[arg-type]
    if line:
        print(line, file=sys.stderr)
    return line
