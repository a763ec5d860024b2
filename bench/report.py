"""What the bench prints, and the results file it writes."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from importlib import metadata

from bench.context import REPO


def header(mib: int | None) -> str:
    return f"\n== {mib} MiB state ==" if mib is not None else "\n== across sizes =="


def lines(metric_id: str, r: dict) -> list[str]:
    """A metric's result as the table's lines."""
    if "error" in r:
        return [f"{metric_id} failed: {r['error']}"]
    return _FORMATS[metric_id](r)


def _m1(m: dict) -> list[str]:
    return [f"M1 stall per save      {m['stall_s'] * 1000:8.1f} ms  vs torch.save+fsync "
            f"{m['torch_save_fsync_s'] * 1000:8.1f} ms  ratio {m['ratio']:.3f}  (target <= {m['target']})"]


def _m3(m: dict) -> list[str]:
    return [f"M3 save->committed     {m['ours_MiBps']:8.1f} MiB/s vs boto3 upload_file {m['boto3_MiBps']:.1f} MiB/s"
            f"  ratio {m['ratio_vs_boto3']:.2f} (target >= 0.9)",
            f"   s3fs put_file       {m['s3fs_MiBps']:8.1f} MiB/s;  DCP FsspecWriter {m['dcp_MiBps']:.1f} MiB/s"
            f"  ours/DCP {m['ratio_vs_dcp']:.2f} (target >= 1.5)"]


def _m4(m: dict) -> list[str]:
    return [f"M4 SIGTERM->committed  median {m['median_s']:.2f} s, max {m['max_s']:.2f} s over {m['trials']} "
            f"trials, success {m['success_rate'] * 100:.0f}%  (target 100%, <= {m['target_s']:.2f} s)"]


def _m2(r: dict) -> list[str]:
    return [f"M2 overhead {label:<14} {m['overhead'] * 100:+.1f}%  ({m['steps']} steps of {m['step_s'] * 1000:.0f} ms, "
            f"a checkpoint every {m['every_k']})  (target <= 2%)"
            for label, m in (("to moto S3", r["s3"]), ("to local disk", r["local"]))]


def _m5(r: dict) -> list[str]:
    m = r["restore"]
    out = [f"M5 restore from S3     {m['ours_s3_s']:.2f} s vs boto3 download+load {m['boto3_download_load_s']:.2f} s "
           f"(x{m['ratio_vs_boto3']:.2f}); vs local disk {m['ours_local_s']:.2f} s (x{m['ratio_vs_local']:.2f})"]
    rec = r["recovery"]
    for where in ("s3", "local"):
        ph = rec[where]
        out.append(f"M5 recovery ({where:<5})   detection {ph['detection_s']:.2f} s, restart {ph['restart_s']:.2f} s, "
                   f"download+load {ph['download_load_s']:.2f} s, first step {ph['first_step_s']:.2f} s; "
                   f"start->first step {ph['start_to_first_step_s']:.2f} s, kill->first step "
                   f"{ph['kill_to_first_step_s']:.2f} s")
    out.append(f"   S3 restart vs the same restart from local disk x{rec['ratio_vs_local_start']:.2f} "
               f"(target <= {rec['target']})")
    return out


def _m9(m: dict) -> list[str]:
    return [f"M9 peak RSS growth     first save {m['first_save_MiB']:.0f} MiB, later saves "
            f"{m['steady_save_MiB']:.0f} MiB  (target <= {m['target_MiB']} MiB)"]


def _m6(r: dict) -> list[str]:
    return [f"M6 steps redone {sig:<8} mean {v['mean']:.1f}, max {v['max']} over {v['trials']} trials "
            f"(target <= {v['target']}; checkpoint every 20 steps)" for sig, v in r.items()]


def _m7(m: dict) -> list[str]:
    out = [f"M7 runtime overhead    steps/s under trainer run / bare torchrun: median of {m['reps']} "
           f"interleaved reps {m['ratio']:.3f} (target >= 0.99); the Checkpointer alone under torchrun "
           f"{m['api_ratio']:.3f}; bare torchrun {statistics.median(m['runs_steps_per_s']['bare']):.1f} steps/s"]
    for k, v in sorted(m["step_end_by_max_stride"].items()):
        out.append(f"   step_end, agreeing at most every {k} step(s): {v['ms_per_call']:.3f} ms per call, "
                   f"{v['ms_per_call'] / v['ms_per_step']:.1%} of a step")
    return out


def _m8(m: dict) -> list[str]:
    s = m["seconds"]
    return [f"M8 launcher start      `launch --help` x{m['help_vs_python']:.2f} and `launch --dry-run` "
            f"x{m['dry_run_vs_python']:.2f} the time of `python -c pass` "
            f"({s['launch --help'] * 1000:.0f} / {s['launch --dry-run'] * 1000:.0f} / "
            f"{s['python -c pass'] * 1000:.0f} ms)"]


def _gpu_stall(r: dict) -> list[str]:
    return [f"M1 on {r['device']}: stall {r['stall_s'] * 1e3:.1f} ms vs torch.save+fsync "
            f"{r['torch_save_fsync_s'] * 1e3:.1f} ms = ratio {r['ratio']:.3f} (target <= {r['target']}); "
            f"first save {r['first_save_s'] * 1e3:.1f} ms (no preallocation {r['first_no_prealloc_s'] * 1e3:.1f} ms); "
            f"steps while allocating x{r['slowdown_while_allocating']:.2f}; pageable x{r['pageable_vs_pinned']:.2f}; "
            f"{r['d2h_GiBps']:.1f} GiB/s"]


def _status_scale(r: dict) -> list[str]:
    base = any("baseline_status_s" in x for x in r["results"])
    out = [f"{'pods':>5} {'status':>8} {'-o json':>8} {'list':>6} {'--help':>7} lines" +
           (f" {'baseline':>9} {'-o json':>8} {'new/base':>8}" if base else "") + "  load before/after (1 min)"]
    for x in r["results"]:
        line = (f"{x['pods']:>5} {x['status_s']:>7}s {x['status_json_s']:>7}s {x['list_s']:>5}s "
                f"{x['launch_help_s']:>6}s {x['status_lines']:>5}")
        if base and "baseline_status_s" in x:
            line += (f" {x['baseline_status_s']:>8}s {x['baseline_status_json_s']:>7}s "
                     f"{x['status_s'] / x['baseline_status_s']:>8.2f}")
        loads = [x.get("load_before"), x.get("load_after")]
        out.append(line + "  " + "/".join(str(lo[0]) if lo else "?" for lo in loads))
    return out


def _metrics_cost(m: dict) -> list[str]:
    return [f"metrics cost           steps/s with /metrics served and scraped every 1 s vs off: median of "
            f"{m['reps']} interleaved reps {m['cost']:+.2%} (target < {m['target']:.1%}); off "
            f"{statistics.median(m['runs_steps_per_s']['off']):.1f} steps/s, {sum(m['scrapes'])} scrapes",
            f"   one scrape (8 ranks' records) {m['scrape_cpu_s'] * 1e3:.2f} ms of CPU: "
            f"{m['core_share']['every_1s']:.2%} of a core scraped every 1 s, "
            f"{m['core_share']['every_30s']:.3%} every 30 s"]


def _status_post_cost(m: dict) -> list[str]:
    return [f"status post cost       steps/s posting TrainJob progress every 1 s vs off: median of "
            f"{m['reps']} interleaved reps {m['cost']:+.2%} (target < {m['target']:.1%}); off "
            f"{statistics.median(m['runs_steps_per_s']['off']):.1f} steps/s, {m['posts']} posts",
            f"   one post (8 ranks' records, TLS, POST) {m['post_cpu_s'] * 1e3:.2f} ms of CPU, "
            f"{m['post_wall_s'] * 1e3:.2f} ms wall: {m['core_share']['every_1s']:.2%} of a core every 1 s, "
            f"{m['core_share']['every_10s']:.3%} every 10 s (the default)"]


def _in_place(r: dict) -> list[str]:
    def parts(m: dict) -> str:
        return (f"{m['total_s']:.1f}s (down {m['down_s']:.1f}s, start to restored {m['start_s']:.1f}s, "
                f"first step {m['first_step_s']:.2f}s)")
    return [f"in-place restart       rank SIGKILL -> first step after recovery, median of {r['trials']}: in place "
            f"from the warm spare {parts(r['warm'])}; in place cold {parts(r['cold'])}; new supervisor "
            f"{parts(r['restart'])}",
            f"   new supervisor / warm {r['restart_over_warm']:.2f}x; cold / warm {r['cold_over_warm']:.2f}x "
            f"(the restart part alone {r['restart_part_cold_over_warm']:.2f}x)"]


def _node_copy(m: dict) -> list[str]:
    return [f"node-copy restore      {m['node_copy_s']:8.2f} s from the node copy vs {m['s3_s']:.2f} s from S3 "
            f"(median of {m['reps']})  ratio {m['ratio']:.1f}x (target >= {m['target']:g}x)",
            f"   blocking save       {m['save_s3_and_node_copy_s']:8.2f} s with the node copy vs "
            f"{m['save_s3_s']:.2f} s without; load average {m['load_average']:.1f}"]


_FORMATS = {"M1": _m1, "M2": _m2, "M3": _m3, "M4": _m4, "M5": _m5, "M6": _m6, "M7": _m7, "M8": _m8, "M9": _m9,
            "metrics-cost": _metrics_cost, "gpu-stall": _gpu_stall, "status-scale": _status_scale, "in-place": _in_place,
            "status-post-cost": _status_post_cost, "node-copy": _node_copy}


def machine() -> dict:
    """Where the run ran; from package metadata, so the bench's own process needs no torch."""
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            **{name: version(name) for name in ("torch", "moto", "boto3", "s3fs")}}


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()


def write(results: dict, out_dir: str) -> str:
    """Write bench/results/<time>.json (or into out_dir); return its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, time.strftime("%Y%m%d-%H%M%S") + ".json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    return path
