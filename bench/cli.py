"""What checkpointing costs, as ratios to baselines measured in the same run (raw boto3,
torch.save, bare torchrun, a bare interpreter), since shared machines are noisy.

    python -m bench [--quick] [--sizes 64,256] [metric ...]     # from the repository root

Prints a table and writes bench/results/<time>.json.

Each metric runs in a process of its own (bench/child.py); the bench owns the moto server, the
signals and every process below it. It ends when the metrics are done, on SIGTERM (exit 143) and
on Ctrl-C (exit 130), and leaves nothing running: it kills and reaps every descendant on the
way out, orphans included (bench/processes.py).

Why the old bench/run.py did not end: it ran every metric in its one process, so the first
Checkpointer it built replaced its SIGTERM handler with the runtime's, which only sets a flag
for step_end() (a training loop's preemption notice): the bench ignored SIGTERM from then on,
and only SIGKILL ended it, which left any run it had started training. Its exit after
`wrote …json` waited on threads the metrics left in it (bench/child.py names them); now no
metric runs in the bench's process, and a metric's process does not wait on them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading

from bench import metrics, processes, report
from bench.context import REPO, Context, progress

BUCKET = "bench"


class Stopped(Exception):
    """A SIGTERM or SIGINT arrived: the bench ends what runs and exits 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """SIGTERM and SIGINT only set a flag (a handler that raises can interrupt cleanup); the wait
    loops read it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum = 0

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signum = self.signum or signum
        self.event.set()

    def check(self) -> None:
        if self.event.is_set():
            raise Stopped(self.signum)


def _run_child(metric: metrics.Metric, ctx: Context, signals: _Signals) -> dict:
    """Run one metric in its own process and return its result ({"error": ...} when it failed)."""
    result_path = os.path.join(ctx.tmp, f"result-{metric.id}-{ctx.mib}.json")
    cmd = [sys.executable, "-m", "bench.child", metric.module, ctx.to_json(), result_path]
    if metric.one_thread:
        cmd.append("--one-thread")
    # Its own session: a Ctrl-C at the terminal reaches only the bench, which then ends the whole tree.
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                signals.check()
    finally:
        processes.end_tree(proc)  # before the moto server and the scratch directory go
    if rc != 0 or not os.path.exists(result_path):
        return {"error": f"its process exited {rc} (traceback above)"}
    with open(result_path) as f:
        return json.load(f)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    names = ", ".join(f"{m.id} ({m.module})" for m in metrics.METRICS)
    described = "; ".join(f"{m.id}: {m.summary}" + ("" if m.default else " [only when named]") for m in metrics.METRICS)
    p = argparse.ArgumentParser(prog="python -m bench", epilog="metrics: " + described,
                                description=__doc__.split("\n\n")[0] + " Prints a table and writes "
                                "bench/results/<time>.json.")
    p.add_argument("metrics", nargs="*", metavar="metric", help=f"which to run, by id or name (default: all but "
                   f"those marked [only when named]): {names}")
    p.add_argument("--quick", action="store_true", help="64 MiB, 3 trials, fewer steps and runs: a smoke run")
    p.add_argument("--sizes", default=None, help="comma-separated state sizes in MiB (default 64,256; --quick 64)")
    p.add_argument("--trials", type=int, default=None, help="SIGTERM trials of M4 (default 20; --quick 3)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (default 5; --quick 3)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"), help="where the results file goes")
    args = p.parse_args(argv)
    for name in args.metrics:
        try:
            metrics.find(name)
        except KeyError:
            p.error(f"no metric {name!r}; the metrics: {names}")
    return args


def _measure(plan: list[metrics.Metric], args: argparse.Namespace, tmp: str, signals: _Signals,
             results: dict) -> bool:
    """Run the plan, printing each result as it comes; True if every metric succeeded."""
    sizes = [int(s) for s in (args.sizes or ("64" if args.quick else "64,256")).split(",")]
    base = Context(mib=sizes[0], reps=args.reps or (3 if args.quick else 5),
                   trials=args.trials or (3 if args.quick else 20), quick=args.quick, bucket=BUCKET, tmp=tmp)
    ok = True

    def one(metric: metrics.Metric, ctx: Context) -> dict:
        nonlocal ok
        signals.check()
        progress(f"{metric.id}: {metric.summary}" + (f" ({ctx.mib} MiB)" if metric.per_size else ""))
        r = _run_child(metric, ctx, signals)
        ok = ok and "error" not in r
        print("\n".join(report.lines(metric.id, r)), flush=True)
        return r

    for mib in sizes:
        per_size = [m for m in plan if m.per_size]
        if per_size:
            print(report.header(mib), flush=True)
        done = results["sizes"].setdefault(str(mib), {})
        for m in per_size:
            if any("error" in done.get(n, {}) for n in m.needs):
                done[m.id] = {"error": f"needs {', '.join(m.needs)}, which failed"}
                continue
            earlier = {n: done[n] for n in m.needs}
            done[m.id] = one(m, Context(**{**vars(base), "mib": mib, "earlier": earlier}))
    once = [m for m in plan if not m.per_size]
    if once:
        print(report.header(None), flush=True)
    for m in once:
        results[m.id] = one(m, base)
    return ok


@contextlib.contextmanager
def _s3(plan: list[metrics.Metric]):
    """The moto server and bucket the plan needs, in this process's environment (children inherit it)."""
    if not any(m.s3 for m in plan):
        yield
        return
    import boto3

    from testsupport.local_s3 import CREDENTIALS, moto_server

    os.environ.update(CREDENTIALS)
    with moto_server() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    plan = metrics.plan(args.metrics)
    signals = _Signals()
    signals.install()
    processes.adopt_orphans()
    results: dict = {"machine": report.machine(), "commit": report.commit(), "quick": args.quick, "sizes": {}}
    code = 0
    try:
        with tempfile.TemporaryDirectory(prefix="kubetrain-bench-", ignore_cleanup_errors=True) as tmp, _s3(plan):
            code = 0 if _measure(plan, args, tmp, signals, results) else 1
    except Stopped as e:
        results["stopped_by"] = str(e)
        code = 128 + e.signum
    finally:
        # Nothing should be left; whatever is (a metric's stray run) is ended here, and named.
        for leftover in processes.end_descendants():
            print(f"bench: ended a process still running: {leftover}", file=sys.stderr)
    if results["sizes"] or any(m.id in results for m in plan):
        print(f"wrote {report.write(results, args.out)}", flush=True)
    if code > 128:
        print(f"bench: stopped by {results['stopped_by']}", file=sys.stderr)
    return code
