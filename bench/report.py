#!/usr/bin/env python
"""The full benchmark report: fastgru against onnxruntime and PyTorch, written to bench/RESULTS.md.

    .venv/bin/python bench/report.py [--threads 1,2] [--seconds 1] [--rounds 2] [--quick]

Each runtime runs in its own process, runtimes take turns, medians after warm-up. Besides the
S1-S6 table it measures the machine's ceilings in the same run (a large float32 matrix product for
FLOP/s, a batch-1 matrix-vector product over recurrent weights for bandwidth), a batch/hidden-size
sweep against onnxruntime, and the time from process start to the first result. A PNG chart of
the ratios is drawn when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import re
import os
import platform
import shlex
import subprocess
import sys

from cold_start import first_results
from fastgru.benchmark import SHAPES, Case, run, table, thread_env

HERE = os.path.dirname(os.path.abspath(__file__))

CEILINGS = r"""
import json, sys, time
import numpy as np
def best(f, n):
    f(); ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return float(np.median(ts))
rng = np.random.default_rng(0)
a = rng.standard_normal((2048, 2048), dtype=np.float32)
t = best(lambda: a @ a, 10)
out = {"sgemm_gflops": 2 * 2048 ** 3 / t / 1e9}
for H in (256, 1024):
    r = rng.standard_normal((3 * H, H), dtype=np.float32)
    h = rng.standard_normal(H, dtype=np.float32)
    t = best(lambda: r @ h, 2000 if H == 256 else 200)
    out[f"matvec_GBps_H{H}"] = r.nbytes / t / 1e9
print(json.dumps(out))
"""

def cpu_name() -> str:
    """The CPU's model name with its family and model numbers, from /proc/cpuinfo (a name such
    as "AMD EPYC" alone does not tell Zen 4 from Zen 5)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine() -> str:
    from fastgru.kernels.bfloat16 import PATHS
    from fastgru.kernels.simd import VECTOR_BYTES

    caches = subprocess.run(["sh", "-c", "lscpu | grep -i 'cache'"], capture_output=True,
                            text=True).stdout.split("\n")
    packages = ("numpy", "numba", "onnxruntime", "torch", "openvino")
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in packages
                         if importlib.util.find_spec(p) is not None)
    bf16 = {"tiles": "AMX tiles (AMX-BF16)", "dot": "bfloat16 dot products (AVX512_BF16)",
            "widen": "bfloat16 weights widened to float32 (no AVX512_BF16)"}[PATHS[-1]]
    return (f"{cpu_name()}, {os.cpu_count()} cores; "
            f"{'; '.join(' '.join(c.split()) for c in caches if c)}"
            f"\n\nPython {platform.python_version()}, {versions}; Numba threading layer: "
            f"{_threading_layer()}; {VECTOR_BYTES * 8}-bit vectors; fastgru's bfloat16 path: "
            f"{bf16}")


def _threading_layer() -> str:
    code = ("import numba, numpy as np, fastgru; from fastgru.kernels.config import parallel_guard;"
            "parallel_guard(); print(numba.threading_layer())")
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True).stdout.strip()


def ceilings(threads_list) -> dict:
    import json

    found = {}
    for threads in threads_list:
        out = subprocess.run([sys.executable, "-c", CEILINGS], capture_output=True, text=True,
                             env=thread_env(threads), check=True).stdout
        found[threads] = json.loads(out)
    return found


def ceiling_table(records, ceiling) -> str:
    """Issue 5's yardsticks: S3, S4 as a share of the matrix product's GFLOP/s; S2, S6 as a share
    of the matvec bandwidth over weights of the same size (the cache level that holds them),
    counting the recurrent weights read once per step (the projection's time included)."""
    rows = ["| case | threads | fastgru | ceiling | share |", "|---|---|---|---|---|"]
    for r in records:
        case = SHAPES[r["case"]]
        if r["runtime"] != "fastgru" or case.name not in ("S2", "S3", "S4", "S6"):
            continue
        c = ceiling[r["threads"]]
        if case.batch == 1:
            rate = 12 * case.hidden_size ** 2 * case.steps / r["median_s"] / 1e9
            top = c[f"matvec_GBps_H{case.hidden_size}"]
            unit = "GB/s of recurrent weights"
        else:
            rate, top, unit = case.flops / r["median_s"] / 1e9, c["sgemm_gflops"], "GFLOP/s"
        rows.append(f"| {case.name} | {r['threads']} | {rate:.1f} {unit} | {top:.1f} "
                    f"| {rate / top:.0%} |")
    return "\n".join(rows)


def sweep_cases(quick: bool):
    batches = (1, 16, 256) if quick else (1, 4, 16, 64, 256)
    hiddens = (64, 256, 1024) if quick else (64, 128, 256, 512, 1024)
    return [Case(f"B{b}H{h}", b, 20, 128, h) for h in hiddens for b in batches]


def chart(records, path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = {(r["case"], r["threads"]): r["median_s"] for r in records if r["runtime"] == "fastgru"}
    peers = sorted({(r["runtime"], r["threads"]) for r in records if r["runtime"] != "fastgru"})
    cases = list(dict.fromkeys(r["case"] for r in records))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(1, len(peers))
    for i, (runtime, threads) in enumerate(peers):
        ratios = [next(r["median_s"] for r in records if r["case"] == c and
                       r["runtime"] == runtime and r["threads"] == threads) / base[(c, threads)]
                  for c in cases]
        ax.bar([x + i * width for x in range(len(cases))], ratios, width,
               label=f"{runtime}, {threads} thread(s)")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([x + width * (len(peers) - 1) / 2 for x in range(len(cases))], cases)
    ax.set_ylabel("peer time / fastgru time (higher: fastgru faster)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smaller sweep")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    command = "python bench/report.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    print("machine ceilings...", file=sys.stderr)
    ceiling = ceilings(threads)
    runtimes = ["fastgru", "fastgru-bf16", "onnxruntime", "torch"]
    if importlib.util.find_spec("openvino") is not None:
        runtimes += ["openvino", "openvino-f32"]
    records = run(list(SHAPES.values()), runtimes, threads, args.seconds, args.rounds)
    sweep = sweep_cases(args.quick)
    sweep_records = run(sweep, ["fastgru", "onnxruntime"], [1], min(args.seconds, 0.5))
    print("first results from fresh processes...", file=sys.stderr)
    first = first_results(rounds=5)
    print("memory over 100k calls...", file=sys.stderr)
    memory = subprocess.run([sys.executable, os.path.join(HERE, "memory.py"), "--calls",
                             "100000"], capture_output=True, text=True, check=True,
                            env=thread_env(threads[0])).stdout.strip()
    print("the example service under load...", file=sys.stderr)
    service = subprocess.run([sys.executable, os.path.join(os.path.dirname(HERE), "examples",
                                                           "load.py"), "--clients", "16",
                              "--seconds", str(5 * args.seconds)], capture_output=True, text=True,
                             check=True).stdout.strip()
    has_chart = chart(records, os.path.join(HERE, "ratios.png"))

    lines = [f"## {cpu_name()}", "", f"Command: `{command}`", "", f"Machine: {machine()}", "",
             "Each runtime in its own process, runtimes taking turns "
             f"({args.rounds} rounds), medians after warm-up. \"time / fastgru's\" above 1 means "
             "fastgru is faster.", "", "### Ceilings measured in the same run", "",
             "| threads | float32 2048² matrix product GFLOP/s | matvec over 3H×H weights, "
             "H=256 (786 KB) GB/s | H=1024 (12.6 MB) GB/s |", "|---|---|---|---|"]
    for t, c in ceiling.items():
        lines.append(f"| {t} | {c['sgemm_gflops']:.1f} | {c['matvec_GBps_H256']:.1f} "
                     f"| {c['matvec_GBps_H1024']:.1f} |")
    lines += ["", "### S1-S6 (DESIGN.md)", "", table(records, list(SHAPES.values())), ""]
    lines += ["### bfloat16", "", bfloat16_table(records), ""]
    lines += ["### fastgru against the ceilings", "", ceiling_table(records, ceiling), ""]
    if has_chart:
        lines += ["![ratios](ratios.png)", ""]
    lines += ["### Sweep: T=20, D=128, 1 thread, fastgru against onnxruntime", "",
              "| H \\ B | " + " | ".join(str(b) for b in sorted({c.batch for c in sweep})) + " |",
              "|---" * (1 + len({c.batch for c in sweep})) + "|"]
    for h in sorted({c.hidden_size for c in sweep}):
        cells = []
        for b in sorted({c.batch for c in sweep}):
            name = f"B{b}H{h}"
            times = {r["runtime"]: r["median_s"] for r in sweep_records if r["case"] == name}
            cells.append(f"{times['onnxruntime'] / times['fastgru']:.2f}")
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: onnxruntime's time / fastgru's time.", "",
              "### From process start to the first result (`python bench/cold_start.py`)", "",
              first]
    setup = {r["runtime"]: r["setup_s"] for r in records if r["case"] == "S2" and
             r["threads"] == threads[0]}
    lines += ["", "Inside a warm worker, the first S2 call (model build + compile/load, or session "
              "creation) took: " + ", ".join(f"{k} {v:.2f} s" for k, v in setup.items()), ""]
    lines += ["### Memory: 100,000 calls of varying shapes, dtypes and layouts "
              "(`python bench/memory.py`)", "", memory, "",
              "### The example service under load (`python examples/load.py --clients 16`)", "",
              "Sixteen concurrent clients on 127.0.0.1 (JSON over HTTP, clients in one Python "
              "process beside the server on the same 2 cores); sequences are 50 frames of 64.",
              "", service, ""]
    section = "\n".join(lines)
    write_section(args.out, cpu_name(), section)
    print(section)
    return 0


def bfloat16_table(records) -> str:
    """fastgru in bfloat16 against its own float32 and OpenVINO's default precision: times and
    each one's largest difference from onnxruntime's float32 outputs (which are within 4e-7 of
    float64 on these shapes)."""
    by = {(r["case"], r["threads"], r["runtime"]): r for r in records}
    rows = ["| case | threads | fastgru-bf16 µs | fastgru float32 / bf16 | OpenVINO default µs "
            "| OpenVINO default / fastgru-bf16 | fastgru-bf16 max diff | OpenVINO default max "
            "diff |", "|---|---|---|---|---|---|---|---|"]
    for (case, threads, runtime), r in by.items():
        if runtime != "fastgru-bf16":
            continue
        f32 = by[(case, threads, "fastgru")]
        ov = by.get((case, threads, "openvino"))
        peer = ["-", "-", "-"] if ov is None else [
            f"{ov['median_s'] * 1e6:.1f}", f"{ov['median_s'] / r['median_s']:.2f}",
            f"{ov['max_abs_diff']:.1e}"]
        rows.append(f"| {case} | {threads} | {r['median_s'] * 1e6:.1f} "
                    f"| {f32['median_s'] / r['median_s']:.2f} | {peer[0]} | {peer[1]} "
                    f"| {r['max_abs_diff']:.1e} | {peer[2]} |")
    return "\n".join(rows)


def write_section(path: str, cpu: str, section: str) -> None:
    """Put this CPU's section into the results file: in place of the section an earlier run on
    the same CPU wrote, else at the end. Other CPUs' sections and other text stay as they are."""
    begin, end = f"<!-- report: {cpu} -->", f"<!-- end report: {cpu} -->"
    block = f"{begin}\n{section}\n{end}"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
