"""The `launch` CLI: from a training script to a job on Kubernetes (or here, with --local).

    cli.py  config.py  commandline.py  errors.py   dispatch, project defaults, shared parsing/printing, errors
    job/        one training job: spec, render, bundle (code shipping), command, verbs, local
    schedule/   `launch schedule`: spec, render, command, submitter (runs in the CronJob's pod)
    chaos/      `launch chaos`: command, cluster faults
    status/     `launch status`/`list`: format (pure), ledger (the runtime's restart ledger), report (text)
    backends/   the training operators' job kinds, one module each (pytorchjob)
    k8s/        everything that talks to the cluster: api, preflight, jobs, status, logs, schedules, faults

It imports only `trainer.contract` from the runtime, and never torch: the CLI must start fast
(kubernetes only once a command talks to a cluster).
"""
