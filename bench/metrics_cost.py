"""metrics-cost: steps/s under `python -m trainer run` with /metrics served and scraped vs not served.

Same script, same 2 ranks, checkpoints every 50 steps (so the ranks' RankStats events flow), runs
interleaved; "on" is scraped once a second, 15 to 60 times as often as a Prometheus usually scrapes,
and every scrape is parsed (a bad one fails the metric). The ranks write their stats record in both
runs (it rides on their control-folder heartbeat): "off" vs "on" is the cost of serving.
Target: below 0.5 % (issue 23).
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from bench.context import REPO, WORKLOAD, Context, progress

SCRAPE_EVERY_S = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scraper(port: int, stop: threading.Event, scrapes: list[int]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    while not stop.wait(SCRAPE_EVERY_S):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            continue  # not up yet, or gone
        list(text_string_to_metric_families(text))  # raises on a malformed exposition
        scrapes.append(1)


def steps_per_s(d: str, name: str, port: int, steps: int) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "trainer", "run", "--nproc-per-node", "2", "--checkpoint", d, "--run-id", name,
           "--checkpoint-every-steps", "50", "--metrics-port", str(port), WORKLOAD, "--mib", "16", "--steps",
           str(steps), "--step-ms", "0", "--compute", "64"]
    stop, scrapes = threading.Event(), []
    scraper = threading.Thread(target=_scraper, args=(port, stop, scrapes), daemon=True) if port else None
    if scraper is not None:
        scraper.start()
    try:
        r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                           text=True, timeout=600)
    finally:
        stop.set()
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return min(float(v) for v in re.findall(r"STEPS_PER_S (\d+(?:\.\d+)?)", r.stdout)), len(scrapes)


def scrape_cpu_s(ranks: int = 8, scrapes: int = 200) -> float:
    """CPU seconds of one scrape of a supervisor with `ranks` ranks' records, each with a full event window."""
    from prometheus_client import CollectorRegistry, generate_latest

    from trainer.control_folder import CheckpointEvent, Committed, Progress, RankStats
    from trainer.metrics.collector import RuntimeCollector, Sources

    with tempfile.TemporaryDirectory() as d:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RuntimeCollector(Sources(d, "bench", 0, None, lambda: ("SIGTERM",))))
        now = time.time()
        Committed(100, now).write(d)
        for i in range(scrapes + 1):
            for r in range(ranks):
                Progress(r, 100 + i, now + i).write(d)
                events = tuple(CheckpointEvent(seq, "save", seq, now, stall_s=0.1, upload_s=1.0, bytes=10 ** 8)
                               for seq in range(i + 1, i + 1 + RankStats.KEEP))
                RankStats(r, events, {"throttled": i}).write(d)
            if i == 0:
                generate_latest(registry)  # the first scrape absorbs the whole window
                t0 = time.process_time()
            else:
                generate_latest(registry)
        return (time.process_time() - t0) / scrapes


def run(ctx: Context) -> dict:
    steps, reps = (200, 1) if ctx.quick else (1500, 5)
    runs: dict[str, list[float]] = {"off": [], "on": []}
    scrapes = []
    with tempfile.TemporaryDirectory(dir=ctx.tmp) as d:
        for i in range(reps):  # interleaved, alternating which goes first
            for name in (("off", "on") if i % 2 == 0 else ("on", "off")):
                progress(f"metrics-cost rep {i + 1}/{reps}: {name}")
                rate, n = steps_per_s(d, f"mc-{name}-{i}-{time.monotonic_ns()}", _free_port() if name == "on" else 0,
                                      steps)
                runs[name].append(rate)
                if name == "on":
                    scrapes.append(n)
    ratio = statistics.median(on / off for on, off in zip(runs["on"], runs["off"]))
    progress("metrics-cost: one scrape in-process")
    cpu = scrape_cpu_s()
    return {"runs_steps_per_s": runs, "reps": reps, "steps": steps, "scrapes": scrapes,
            "cost": 1 - ratio, "scrape_cpu_s": cpu,
            "core_share": {"every_1s": cpu / 1.0, "every_15s": cpu / 15.0, "every_30s": cpu / 30.0},
            "target": 0.005}
