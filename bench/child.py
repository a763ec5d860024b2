"""One metric in a process of its own: `python -m bench.child MODULE CONTEXT_JSON RESULT_PATH [--one-thread]`.

The bench's CLI starts this for each metric, so what a metric leaves behind (threads, a
Checkpointer's SIGTERM handler, torch's state) ends with its process, not in the bench.

Once the result is on disk the process ends with os._exit, without interpreter
finalization, as trainer.worker does: finalization joins threads without a timeout, and a
metric leaves some it does not own. The old one-process bench, at its exit after M1-M9,
still had fsspec's event loop (daemon) and that loop's default executor thread
(`asyncio_0`, not a daemon: concurrent.futures joins it at exit, unbounded), plus, when the
moto server stopped before a Checkpointer's background prune finished, that prune retrying
DeleteObject against the stopped server with botocore's backoff. A metric's process must
not wait on any of them.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from bench.context import Context


def main(argv: list[str]) -> int:
    module, context, result_path, *flags = argv
    ctx = Context.from_json(context)
    if "--one-thread" in flags:
        import torch

        torch.set_num_threads(1)
    result = importlib.import_module(f"bench.{module}").run(ctx)
    with open(result_path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(result_path + ".tmp", result_path)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])  # an exception leaves with its traceback and exit 1, finalization included
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
