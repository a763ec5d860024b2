"""The contract between the launcher and the runtime: standard library only.

Everything that crosses from `launch` into a pod is named here once: the
environment variables that carry the runtime's settings, the exit codes that
tell the Kubeflow training operator whether to retry, and the checkpoint
layout. The launcher imports this package and nothing else of `trainer`; it
reads every name from `trainer.contract` itself, never from a submodule:

    names        the container, KUBETRAIN_* variables, labels, defaults
    exit_codes   ExitCode and what each means
    checkpoints  checkpoint URIs, the run folder's layout ("committed" is defined here), scheduled runs
    pod          log lines `launch` reads back, fault-injection files
    ledger       the restart ledger's records and rules
    errors       the error base class both sides derive from, and one_line
"""

from __future__ import annotations

from trainer.contract.checkpoints import *  # noqa: F401,F403
from trainer.contract.errors import *  # noqa: F401,F403
from trainer.contract.exit_codes import *  # noqa: F401,F403
from trainer.contract.ledger import *  # noqa: F401,F403
from trainer.contract.names import *  # noqa: F401,F403
from trainer.contract.pod import *  # noqa: F401,F403
