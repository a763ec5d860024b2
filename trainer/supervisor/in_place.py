"""Whether the supervisor starts its ranks again itself after an attempt ended (pure).

An in-place restart is a fresh torchrun in the same supervisor: the ranks restore the last
committed step as a new pod's would, without the pod's scheduling, image pull and container
start. Only a lost rank qualifies (Outcome.rank_lost: killed by a signal, hung, a DataLoader
worker killed, its peers gone); a preemption, a stop request, the user's error, a usage error
or a crash-loop verdict never does. The budget (--in-place-restarts) is per supervisor process:
once spent, the attempt's own exit code goes to the cluster, which replaces the pod.

Several nodes restart together without talking to each other: a rank lost on one node makes
every other node's ranks lose their peers, so every supervisor ends the same attempt with a lost
rank and starts its generation g+1 (its g-th in-place restart). Generation g meets on the
master's port + g (rendezvous_port), so no node joins the store of a generation that is ending,
and waits for its peers at most IN_PLACE_RENDEZVOUS_TIMEOUT_S: a node that did not restart in
place (its pod lost or replaced, its budget spent) makes the others give up and exit for
replacement too, and the new pods all meet again at generation 0; a whole pod lost thus costs
that wait more than without in-place restarts. Elastic jobs (torchrun's own c10d rendezvous)
exit as before.
"""

from __future__ import annotations

from typing import Mapping

from trainer.contract import ExitCode, is_retryable
from trainer.supervisor.classify import Outcome


#: How long a generation after the first waits for every node at its rendezvous (torchrun's static
#: rendezvous `timeout`; its default, 600 s, is for pods still being scheduled). Peers that restart in
#: place arrive within their torchrun's start (15 s on two loaded cores); a peer that does not is not
#: coming: a whole pod lost (its replacement starts at generation 0), or ranks that have not noticed the
#: loss yet (NCCL without --hang-timeout). That wait is what an in-place restart costs when it fails.
IN_PLACE_RENDEZVOUS_TIMEOUT_S = 60


def static_nodes(env: Mapping[str, str]) -> bool:
    """Whether the operator's env gives a fixed set of nodes whose rendezvous torchrun_args builds:
    one node (--standalone), or a static multi-node job (master address, port and node rank)."""
    nnodes = env.get("PET_NNODES") or "1"
    return ":" not in nnodes and not (env.get("PET_RDZV_ENDPOINT") or env.get("PET_RDZV_BACKEND"))


def rendezvous_port(base: int, generation: int) -> int:
    """Generation g's port: the master's port + g, so that no node meets another generation's store."""
    return base + generation


def restart_in_place(outcome: Outcome, *, stopping: bool, static: bool, used: int, budget: int) -> bool:
    """Whether this attempt's end starts a new one in the same supervisor.

    `stopping`: a stop was requested (a signal, a cloud notice, a crash-loop verdict, a lost lease);
    `static`: static_nodes(env); `used`: in-place restarts this supervisor already made;
    `budget`: --in-place-restarts.
    """
    return (outcome.rank_lost and is_retryable(outcome.code) and outcome.code != ExitCode.PREEMPTED
            and not stopping and static and used < budget)


def budget_spent(outcome: Outcome, *, stopping: bool, static: bool, used: int, budget: int) -> bool:
    """Whether the attempt would have restarted in place but for a spent budget (worth one log line)."""
    return budget > 0 and used >= budget and restart_in_place(outcome, stopping=stopping, static=static,
                                                              used=0, budget=1)
