"""Everything that talks to a Kubernetes cluster; the only package that imports `kubernetes`.

api (connect, the call wrapper with its timeouts, create/read/replace/delete of any kind, all-or-none
creation), preflight, jobs, status, logs, schedules, faults.
"""
