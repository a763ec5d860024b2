"""Ship the user's code without an image rebuild: a tar.gz of the script or its folder, in the
job's ConfigMap or, when too big for one, in the object store (uploaded through launcher/objectstore.py).

A directory is packed with .gitignore honoured (through `git ls-files` when
it is a git work tree, else a small subset of gitignore rules: names and
`*` patterns, and folders ending in '/'). The bundle is deterministic (sorted,
zeroed times and owners) so its sha256 names its content.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from typing import Callable

from launcher import objectstore
from launcher.errors import ClusterError, SpecError
from launcher.job.render import CodeRef

#: ConfigMaps hold at most 1 MiB in total; keep room for metadata.
CONFIGMAP_LIMIT = 900 * 1024
ALWAYS_SKIPPED = {".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".hypothesis",
                  "checkpoints"}


@dataclasses.dataclass(frozen=True)
class Bundle:
    data: bytes
    sha256: str
    #: The script, relative to the bundle root.
    entrypoint: str
    files: tuple[str, ...]

    @property
    def fits_configmap(self) -> bool:
        return len(self.data) <= CONFIGMAP_LIMIT


def _gitignore_patterns(root: str) -> list[str]:
    try:
        with open(os.path.join(root, ".gitignore")) as f:
            return [ln.strip() for ln in f if ln.strip() and not ln.startswith(("#", "!"))]
    except FileNotFoundError:
        return []


def _ignored(rel: str, is_dir: bool, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if name in ALWAYS_SKIPPED:
        return True
    for p in patterns:
        dir_only = p.endswith("/")
        p = p.strip("/")
        if dir_only and not is_dir:
            continue
        target = rel if "/" in p else name
        if fnmatch.fnmatch(target, p):
            return True
    return False


def list_files(root: str) -> list[str]:
    """Files under `root` to ship, relative and sorted."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                             capture_output=True, check=True, timeout=30).stdout
        files = [f for f in out.decode().split("\0") if f and os.path.isfile(os.path.join(root, f))]
        return sorted(f for f in files if not any(part in ALWAYS_SKIPPED for part in f.split("/")))
    except (OSError, subprocess.SubprocessError):
        pass
    patterns = _gitignore_patterns(root)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(d for d in dirnames if not _ignored(rel_dir + d, True, patterns))
        files += [rel_dir + f for f in filenames if not _ignored(rel_dir + f, False, patterns)]
    return sorted(files)


def make_bundle(script: str, *, code_dir: str | None = None) -> Bundle:
    """Pack `script` alone, or the folder `code_dir` that contains it."""
    if not os.path.isfile(script):
        raise SpecError(f"script {script!r} does not exist or is not a file")
    if code_dir is None:
        root, files = os.path.dirname(os.path.abspath(script)), [os.path.basename(script)]
    else:
        if not os.path.isdir(code_dir):
            raise SpecError(f"--code-dir {code_dir!r} is not a folder")
        root = os.path.abspath(code_dir)
        if not os.path.abspath(script).startswith(root + os.sep):
            raise SpecError(f"script {script!r} is not inside --code-dir {code_dir!r}")
        files = list_files(root)
    entry = os.path.relpath(os.path.abspath(script), root)
    if entry not in files:
        files.append(entry)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(files):
            full = os.path.join(root, rel)
            info = tarfile.TarInfo(rel)
            info.size = os.path.getsize(full)
            info.mode = 0o755 if os.access(full, os.X_OK) else 0o644
            with open(full, "rb") as f:
                tar.addfile(info, f)
    data = gzip.compress(raw.getvalue(), mtime=0)
    return Bundle(data=data, sha256=hashlib.sha256(data).hexdigest(), entrypoint=entry, files=tuple(sorted(files)))


def pack(script: str, *, name: str, code_dir: str | None, code_uri: str | None) -> tuple[Bundle, CodeRef]:
    """(bundle, CodeRef): the code in the job's ConfigMap, or under the `code_uri` prefix when too big for one."""
    bundle = make_bundle(script, code_dir=code_dir)
    uri = None
    if not bundle.fits_configmap:
        if not code_uri:
            raise SpecError(f"the code bundle is {len(bundle.data) // 1024} KiB, over the ConfigMap limit; pass "
                            "--code-uri s3://BUCKET/PREFIX to ship it through the object store, or shrink --code-dir")
        uri = f"{code_uri.rstrip('/')}/{name}/{bundle.sha256[:16]}.tar.gz"
    return bundle, CodeRef(sha256=bundle.sha256, entrypoint=bundle.entrypoint,
                           configmap_data=bundle.data if uri is None else None, uri=uri)


def upload(uri: str, data: bytes) -> None:
    try:
        objectstore.write(uri, data)
    except Exception as e:
        raise ClusterError(f"uploading the code bundle to {uri}: {e}") from e


def remove(uri: str) -> None:
    """Delete an uploaded bundle again; a failure is a warning (the failure that brought us here matters more)."""
    try:
        objectstore.remove(uri)
    except Exception as e:
        print(f"launch: warning: could not remove the code bundle {uri}: {e}", file=sys.stderr)


def shipped_then_created(code: CodeRef, data: bytes, create: Callable[[], object]) -> None:
    """Upload a bundle that goes to the object store, then `create()` the objects that use it; when
    the create fails, the bundle goes again: nothing half-created, not on the cluster, not in the bucket."""
    if code.uri:
        upload(code.uri, data)
    try:
        create()
    except BaseException:
        if code.uri:
            remove(code.uri)
        raise
