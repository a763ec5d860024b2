"""`launch chaos --local`: prove that a training script resumes correctly, before production does.

Test tooling, not part of the runtime image: the runtime (`trainer/`) never imports it.

    plan.py         the plan and the faults its seed places, each restart's resume step chosen to cover
    coverage.py     what resume steps cover: residues mod 2..8, an epoch's first and last step (pure)
    driver.py       runs both runs and the faults; records (record.py), never judges
    run_start.py    one start of the runtime and its processes (found through trainer.processes
                    and the PIDs the ranks record)
    checkpoints.py  a run folder on disk: what verifies, what `latest` names, how far a commit got
    compare.py      two runs' checkpoints, leaf by leaf, sorted by what to fix first
    oracle.py       the verdict: a pure function of the recorded run
    report.py       the table, the verdict, the restart ledger, --repeat's agreement
    plugin.py       the `kubetrain_chaos` pytest fixture
"""

from kubetrain_chaos.driver import run_chaos, run_repeated
from kubetrain_chaos.plan import ChaosPlan, Fault, plan_faults, reproduce_command
from kubetrain_chaos.report import ChaosReport, format_report, report_json

__all__ = ["ChaosPlan", "ChaosReport", "Fault", "format_report", "plan_faults", "report_json", "reproduce_command",
           "run_chaos", "run_repeated"]
