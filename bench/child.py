"""One metric in a process of its own: `python -m bench.child MODULE CONTEXT_JSON RESULT_PATH [--one-thread]`.

The bench's CLI starts this for each metric, so what a metric leaves behind (threads, a
Checkpointer's SIGTERM handler, torch's state) ends with its process, not in the bench.
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
    sys.exit(main(sys.argv[1:]))
