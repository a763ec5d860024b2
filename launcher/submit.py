"""`python -m launcher.submit`: the command a schedule's CronJob runs (the code: launcher/schedule/submitter.py).

It stays at this name: CronJobs created by an earlier `launch schedule` run it, in
whatever image their runs pull.
"""

import sys

from launcher.schedule.submitter import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
