"""What checkpointing costs, as ratios to baselines measured in the same run: `python -m bench --help`.

    cli.py        the command: the plan, the moto server, signals, every process below it
    child.py      runs one metric in a process of its own
    metrics.py    the metrics, in running order, and what each needs
    report.py     the printed table and the results file
    context.py    what a metric is asked to measure (size, repetitions, bucket, scratch dir)
    processes.py  finding and ending the processes the bench started
    timing.py, store.py, trainer_run.py   what several metrics share

One module per metric: stall (M1), upload (M3), sigterm (M4), overhead (M2), restore (M5),
memory (M9), redone (M6), runtime (M7, with step_end.py run under torchrun), launcher_start
(M8), gpu_stall, status_scale. workload.py is the training script the runs train.
"""
