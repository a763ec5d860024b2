"""One download per node: local rank 0 fetches a file the node's other ranks also need.

Every rank of a restore needs the same replicated `state.pt`. Fetched by every
rank, a node with 2 ranks pulls 2× the bytes through the same NIC: at 256 MiB
on the CPU bench that made an S3 restart 1.86× a restart from local disk
(BENCHMARKS.md, M5). Instead local rank 0 downloads and verifies the file into
the node's spool and links it into place under a name the node's ranks share;
the others wait for that name (or a failure marker with its reason) and load
the same bytes. No collective: the ranks' own all_true after loading is the
only agreement restore needs, and after it local rank 0 removes the file.

The name holds a token rank 0 broadcast for this restore and the node's rank,
so neither an earlier attempt's leftovers (an emptyDir spool survives a
container restart) nor another node sharing the machine is ever read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Mapping

from trainer.storage import spool_dir

FAILED_SUFFIX = ".failed"
#: How often a waiting rank looks for the file: small against a download (≥ 10s of ms).
POLL_S = 0.01


class HandoffFailed(Exception):
    """Local rank 0 could not provide the file; the message is its reason."""


def node_prefix(token: str, env: Mapping[str, str]) -> str | None:
    """The path prefix this node's ranks share for `token`; None when the node runs one rank."""
    if int(env.get("LOCAL_WORLD_SIZE") or 1) <= 1:
        return None
    return os.path.join(spool_dir(), f"handoff-{token}-node{env.get('GROUP_RANK') or 0}-")


def publish(src: str, dest: str) -> None:
    """Make the complete file `src` visible at `dest` in one step (a hard link, else copy + rename)."""
    try:
        os.link(src, dest)
    except OSError:  # another file system, or one without hard links
        tmp = f"{dest}.tmp-{os.getpid()}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)


def publish_failure(dest: str, reason: str) -> None:
    """Tell the waiting ranks why `dest` will never come (no-op once it exists)."""
    if not os.path.exists(dest):
        tmp = f"{dest}{FAILED_SUFFIX}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(reason)
        os.replace(tmp, dest + FAILED_SUFFIX)


def wait_for(dest: str, timeout_s: float) -> str:
    """`dest` once local rank 0 published it; HandoffFailed with its reason, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(dest):
        with contextlib.suppress(FileNotFoundError):
            with open(dest + FAILED_SUFFIX) as f:
                raise HandoffFailed(f.read())
        if time.monotonic() > deadline:
            raise HandoffFailed(f"local rank 0 did not provide {os.path.basename(dest)} in {timeout_s:.0f} s")
        time.sleep(POLL_S)
    return dest


def remove(dest: str) -> None:
    for path in (dest, dest + FAILED_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
