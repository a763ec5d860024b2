"""status-post-cost: steps/s under `python -m trainer run` posting progress to a TrainJob status endpoint vs not.

The metrics-cost bench's shape (bench/metrics_cost.py): the same script, 2 ranks, a checkpoint every
50 steps, runs interleaved. "on" has the Trainer's three variables pointing at a local HTTPS server
(this process, a self-signed certificate for 127.0.0.1) and --trainjob-status-seconds 1, ten times
the default rate; "off" has none (the gate off). Whole runs on a shared machine swing more than the
target, so the cost is also timed where it is paid: the CPU of one post on the poster's thread
(reading 8 ranks' records, the body, the TLS connection, the POST), as a share of a core at 1 s and
at the default 10 s. Target: below 0.5 % of step time (issue 23).
"""

from __future__ import annotations

import http.server
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench.context import REPO, WORKLOAD, Context, progress

POST_EVERY_S = 1.0
PATH = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/bench/trainjobs/bench/status"


class Endpoint:
    """A TrainJob status endpoint stand-in: HTTPS on 127.0.0.1 that answers 200 and counts posts."""

    def __init__(self, d: str) -> None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout",
                        os.path.join(d, "tls.key"), "-out", os.path.join(d, "ca.crt")], check=True,
                       capture_output=True)
        with open(os.path.join(d, "token"), "w") as f:
            f.write("bench-token\n")
        self.posts = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, "ca.crt"), os.path.join(d, "tls.key"))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        from trainer import contract

        self.env = dict(zip(contract.TRAINER_STATUS_ENV, (
            f"https://127.0.0.1:{self.httpd.server_address[1]}{PATH}", os.path.join(d, "ca.crt"),
            os.path.join(d, "token"))))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def steps_per_s(d: str, name: str, env: dict[str, str], steps: int) -> float:
    cmd = [sys.executable, "-m", "trainer", "run", "--nproc-per-node", "2", "--checkpoint", d, "--run-id", name,
           "--checkpoint-every-steps", "50", "--trainjob-status-seconds", str(POST_EVERY_S), WORKLOAD, "--mib", "16",
           "--steps", str(steps), "--step-ms", "0", "--compute", "64"]
    r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    if env and "cannot post" in r.stderr:
        raise RuntimeError(f"the poster failed:\n{r.stderr[-3000:]}")
    return min(float(v) for v in re.findall(r"STEPS_PER_S (\d+(?:\.\d+)?)", r.stdout))


def post_cpu_s(endpoint: Endpoint, ranks: int = 8, posts: int = 100) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one post on the poster's thread: facts read from `ranks` ranks'
    records, the body, a new TLS connection, the POST and its answer."""
    from trainer.control_folder import Committed, Progress, TotalSteps
    from trainer.trainjob_status import Endpoint as Target
    from trainer.trainjob_status import RateWindow, body, post, read_facts

    target = Target(*endpoint.env.values())
    with tempfile.TemporaryDirectory() as d:
        now = time.time()
        TotalSteps(10 ** 6).write(d)
        Committed(100, now).write(d)
        rate = RateWindow()
        cpu = wall = 0.0
        for i in range(posts + 1):
            for r in range(ranks):
                Progress(r, 100 + i, now + i).write(d)
            c0, w0 = time.thread_time(), time.perf_counter()
            problem = post(target, body(read_facts(d, rate, lambda: [], now + i), now + i), 5.0)
            if problem:
                raise RuntimeError(problem)
            if i:  # the first pays for imports and the CA's first load
                cpu += time.thread_time() - c0
                wall += time.perf_counter() - w0
        return cpu / posts, wall / posts


def run(ctx: Context) -> dict:
    steps, reps = (200, 1) if ctx.quick else (1500, 5)
    runs: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(dir=ctx.tmp) as d:
        endpoint = Endpoint(d)
        try:
            for i in range(reps):  # interleaved, alternating which goes first
                for name in (("off", "on") if i % 2 == 0 else ("on", "off")):
                    progress(f"status-post-cost rep {i + 1}/{reps}: {name}")
                    runs[name].append(steps_per_s(d, f"sp-{name}-{i}-{time.monotonic_ns()}",
                                                  endpoint.env if name == "on" else {}, steps))
            posts = endpoint.posts
            progress("status-post-cost: one post in-process")
            cpu, wall = post_cpu_s(endpoint)
        finally:
            endpoint.close()
    ratio = statistics.median(on / off for on, off in zip(runs["on"], runs["off"]))
    return {"runs_steps_per_s": runs, "reps": reps, "steps": steps, "posts": posts, "cost": 1 - ratio,
            "post_cpu_s": cpu, "post_wall_s": wall,
            "core_share": {"every_1s": cpu / 1.0, "every_10s": cpu / 10.0}, "target": 0.005}
