"""What the warm spare's forkserver imports before it forks a rank (trainer/warm_rank.py): torch, and
what a rank imports besides, measured (2 cores, torch already imported): our API 1.5 s, and 1.7 s
more for what a Checkpointer and an optimizer's first use import (DCP, torch._dynamo, numpy); 0.05 s
for both once loaded. Imports only: the forkserver runs no torch op, so it forks with one thread (an
OpenMP pool started before a fork would hang the child).
"""

from __future__ import annotations

import importlib

PRELOAD = ("torch", "torch.distributed", "torch.distributed.checkpoint", "torch.distributed.checkpoint.state_dict",
           "torch._dynamo", "torch.nn.parallel", "torch.utils.data", "numpy", "trainer.checkpoint", "trainer.data",
           "trainer.warm_rank")

for _name in PRELOAD:
    try:
        importlib.import_module(_name)
    except Exception:  # not only ImportError, which is all multiprocessing skips: the rank imports it, if it can
        pass
