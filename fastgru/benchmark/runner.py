"""Each measurement in a fresh worker process, and the table of their medians.

onnxruntime's idle threads spin and would distort a shared process, so every (case, threads,
runtime) runs in its own worker, with the thread count fixed by environment variables before
any library loads; the figure that counts is the ratio of medians measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

import numpy as np

from fastgru import checks
from fastgru.benchmark.cases import Case
from fastgru.benchmark.peers import RUNTIMES, make_call


def call_times(call, seconds: float, at_least: int = 5, at_most: int = 100_000) -> list[float]:
    """Seconds taken by each of call()'s calls, made back to back for `seconds` (at least
    `at_least` calls, at most `at_most`). Warm the call up first."""
    times = []
    end = time.perf_counter() + seconds
    while len(times) < at_least or (time.perf_counter() < end and len(times) < at_most):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(call, seconds: float, at_least: int = 5) -> float:
    """The median of call_times(call, seconds, at_least)."""
    return float(np.median(call_times(call, seconds, at_least)))


def worker(runtime: str, case: Case, threads: int, seconds: float, out_path: str) -> dict:
    """Time one runtime on one case in this process; saves its output to out_path."""
    start = time.perf_counter()
    call, output = make_call(runtime, case, threads)
    call()  # compile or load, and the first run
    first_call = time.perf_counter() - start
    np.save(out_path, output())
    warm_until = time.perf_counter() + min(0.5, seconds / 4)
    while time.perf_counter() < warm_until:
        call()
    times = call_times(call, seconds)
    return {"runtime": runtime, "case": case.name, "threads": threads, "calls": len(times),
            "median_s": float(np.median(times)), "p99_s": float(np.percentile(times, 99)),
            "setup_s": first_call}


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    return env


def run(cases, runtimes, threads_list, seconds: float, rounds: int = 1,
        progress=None) -> list[dict]:
    """Every (case, threads, runtime) in its own worker process; returns one record each.

    With rounds > 1 the runtimes take turns (fastgru, peers, fastgru, peers, ...) and a record
    holds the median over rounds of each round's median and p99. Each record gets
    ``max_abs_diff``: its output against onnxruntime's (or fastgru's without onnxruntime).
    """
    progress = sys.stderr if progress is None else progress  # the stream of now, not of import
    records = []
    total = len(cases) * len(threads_list) * len(runtimes) * rounds
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        for threads in threads_list:
            for case in cases:
                outputs, rounds_of = {}, {runtime: [] for runtime in runtimes}
                for _ in range(rounds):
                    for runtime in runtimes:
                        done += 1
                        print(f"[{done}/{total}] {case.name} {runtime}, {threads} thread(s)",
                              file=progress, flush=True)
                        out_path = os.path.join(tmp, f"{runtime}.npy")
                        cmd = [sys.executable, "-m", "fastgru.benchmark", "--worker", runtime,
                               "--case", json.dumps(asdict(case)), "--threads", str(threads),
                               "--seconds", str(seconds), "--out", out_path]
                        proc = subprocess.run(cmd, capture_output=True, text=True,
                                              env=thread_env(threads))
                        if proc.returncode != 0:
                            raise RuntimeError(f"the {runtime} worker failed on {case.name}:\n"
                                               f"{proc.stderr[-2000:]}")
                        rounds_of[runtime].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                        outputs[runtime] = np.load(out_path)
                ref = outputs.get("onnxruntime", outputs["fastgru"])
                for runtime, measured in rounds_of.items():
                    record = dict(measured[0])
                    for key in ("median_s", "p99_s", "setup_s"):
                        record[key] = float(np.median([m[key] for m in measured]))
                    record["calls"] = sum(m["calls"] for m in measured)
                    record["max_abs_diff"] = checks.max_abs_diff(outputs[runtime], ref)
                    records.append(record)
    return records


def table(records, cases) -> str:
    """Markdown: a row per case, thread count and runtime."""
    by_name = {c.name: c for c in cases}
    base = {(r["case"], r["threads"]): r["median_s"] for r in records if r["runtime"] == "fastgru"}
    ref = "onnxruntime" if any(r["runtime"] == "onnxruntime" for r in records) else "fastgru"
    lines = [f"| case | threads | runtime | median µs | p99 µs | GFLOP/s | time / fastgru's "
             f"| max abs diff vs {ref} |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        case = by_name[r["case"]]
        gflops = "-" if case.whole_graph else f"{case.flops / r['median_s'] / 1e9:.1f}"
        lines.append(
            f"| {case.label} | {r['threads']} | {r['runtime']} | {r['median_s'] * 1e6:.1f} "
            f"| {r['p99_s'] * 1e6:.1f} | {gflops} "
            f"| {r['median_s'] / base[(r['case'], r['threads'])]:.2f} "
            f"| {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def worker_main(argv) -> int:
    """A worker process: `python -m fastgru.benchmark --worker RUNTIME --case JSON ...`; prints
    its record as one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=RUNTIMES, required=True)
    parser.add_argument("--case", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    case = Case(**json.loads(args.case))
    print(json.dumps(worker(args.worker, case, args.threads, args.seconds, args.out)))
    return 0
