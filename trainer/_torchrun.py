"""torchrun, with its outcome written to the control dir instead of a traceback.

torchrun reports a failed worker by raising ChildFailedError out of its own
main, which prints a page per failure. The supervisor needs the facts (which
rank, exit code or signal) to map them onto the exit-code contract, so this
wrapper catches the error and writes `result.json`.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from trainer import contract


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun logs every failure at ERROR with its own summary; the supervisor prints ours.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.elastic.agent.server.api").setLevel(logging.ERROR)
    control = os.environ[contract.ENV_CONTROL_DIR]
    result: dict = {"failures": []}
    code = 0
    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as e:
        for global_rank, f in sorted(e.failures.items()):
            result["failures"].append({"rank": global_rank, "exitcode": f.exitcode, "time": f.timestamp,
                                       "signal": f.signal_name() if f.exitcode < 0 else None})
        code = 1
    except Exception as e:  # rendezvous and agent failures: infrastructure
        result["agent_error"] = f"{type(e).__name__}: {e}"
        code = int(contract.ExitCode.INFRA)
    with open(os.path.join(control, contract.CONTROL_RESULT), "w") as f:
        json.dump(result, f)
    return code


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Tearing down torch's interpreter state takes ~0.4 s here, all of it after
    # the outcome is known and inside a preempted pod's grace period.
    os._exit(code)
