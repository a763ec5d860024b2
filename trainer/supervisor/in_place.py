"""Whether the supervisor starts its ranks again itself after an attempt ended (pure).

An in-place restart is a fresh torchrun in the same supervisor: the ranks restore the last
committed step as a new pod's would, without the pod's scheduling, image pull and container
start. Only a lost rank qualifies (Outcome.rank_lost: killed by a signal, hung, a DataLoader
worker killed, its peers gone); a preemption, a stop request, the user's error, a usage error
or a crash-loop verdict never does, and neither does a run of several nodes, whose other nodes'
supervisors would have to restart on the same rendezvous at the same time (they exit as before).
The budget (--in-place-restarts) is per supervisor process: once spent, the attempt's own exit
code goes to the cluster, which replaces the pod.
"""

from __future__ import annotations

from typing import Mapping

from trainer.contract import ExitCode, is_retryable
from trainer.supervisor.classify import Outcome


def single_node(env: Mapping[str, str]) -> bool:
    """Whether the operator's env makes this one node (torchrun_command.torchrun_args: --standalone)."""
    nnodes = env.get("PET_NNODES") or "1"
    return nnodes == "1" and not (env.get("PET_RDZV_ENDPOINT") or env.get("PET_RDZV_BACKEND"))


def restart_in_place(outcome: Outcome, *, stopping: bool, single: bool, used: int, budget: int) -> bool:
    """Whether this attempt's end starts a new one in the same supervisor.

    `stopping`: a stop was requested (a signal, a cloud notice, a crash-loop verdict, a lost lease);
    `used`: in-place restarts this supervisor already made; `budget`: --in-place-restarts.
    """
    return (outcome.rank_lost and is_retryable(outcome.code) and outcome.code != ExitCode.PREEMPTED
            and not stopping and single and used < budget)


def budget_spent(outcome: Outcome, *, stopping: bool, single: bool, used: int, budget: int) -> bool:
    """Whether the attempt would have restarted in place but for a spent budget (worth one log line)."""
    return budget > 0 and used >= budget and restart_in_place(outcome, stopping=stopping, single=single,
                                                              used=0, budget=1)
