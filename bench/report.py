#!/usr/bin/env python
"""The full benchmark report: fastgru against onnxruntime and PyTorch, written to bench/RESULTS.md.

    .venv/bin/python bench/report.py [--threads 1,2] [--seconds 1] [--rounds 2] [--quick]

Each runtime runs in its own process, runtimes take turns, medians after warm-up. Besides the
S1-S6 table it measures the machine's ceilings in the same run (bench/ceilings.py: the cores'
fused multiply-add peak, read rates, NumPy's matrix products) and from them the fastest each
shape could run here, a batch/hidden-size sweep against onnxruntime, and the time from process
start to the first result. A PNG chart of the ratios is drawn when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import subprocess
import sys

from ceilings import recurrent_weight_bytes
from cold_start import first_results
from fastgru.benchmark import SHAPES, Case, run, table, thread_env
from fastgru.kernels.cpu import L1_BYTES, L2_BYTES

HERE = os.path.dirname(os.path.abspath(__file__))


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
    from fastgru.kernels.cpu import BF16_PATHS as PATHS
    from fastgru.kernels.cpu import VECTOR_BYTES

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
    code = ("import numba, numpy as np, fastgru; "
            "from fastgru.kernels.runtime import parallel_guard; "
            "parallel_guard(); print(numba.threading_layer())")
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True).stdout.strip()


def ceilings(threads_list) -> dict:
    """bench/ceilings.py's measurements, in a process of their own for each thread count."""
    found = {}
    for threads in threads_list:
        out = subprocess.run([sys.executable, os.path.join(HERE, "ceilings.py")],
                             capture_output=True, text=True, env=thread_env(threads),
                             check=True).stdout
        found[threads] = json.loads(out)
    return found


# Issue 15's goals: the best float32 peer's time / fastgru's float32 time, per shape
GOALS = {"S2": 1.2, "S3": 1.2, "S4": 1.05, "S5": 1.3, "S6": 1.2}
FLOAT32_PEERS = ("onnxruntime", "torch", "openvino-f32")


def fastest_allowed(case: Case, threads: int, ceiling: dict,
                    itemsize: int = 4) -> tuple[float, str]:
    """The least time a float32 call of `case` (int8 with itemsize 1) can take here
    (seconds), and what sets it.

    Its multiply-adds at the measured fused multiply-add peak (int8: vpdpbusd's, where the CPU
    has it): no code doing them in that precision can be faster. Or fetching each
    layer-direction's recurrent weights once a step at the read rate measured for their size on
    these threads, less what the threads' nearer caches can keep from the step before: their
    L2s where the weights exceed them, else their L1s.
    """
    peak = ceiling.get("int8_gops", ceiling["fma_gflops"]) if itemsize == 1 else \
        ceiling["fma_gflops"]
    arithmetic = case.flops / (peak * 1e9)
    size = recurrent_weight_bytes(case.hidden_size, itemsize)
    beyond_l2 = size > threads * L2_BYTES
    kept = threads * (L2_BYTES if beyond_l2 else L1_BYTES)
    rate = ceiling["read_GBps"].get(str(size))
    if rate is None or size <= kept:
        return arithmetic, "multiply-adds"
    passes = case.steps * case.num_layers * (2 if case.bidirectional else 1)
    reads = passes * (size - kept) / (rate * 1e9)
    if reads <= arithmetic:
        return arithmetic, "multiply-adds"
    return reads, "reads beyond L2" if beyond_l2 else "reads from L2"


def limits_table(records, ceiling) -> str:
    """Per shape: the fastest a float32 call can be here (fastest_allowed), fastgru's time as a
    share of that, and the most any float32 code could be ahead of the best float32 peer, beside
    issue 15's goal for fastgru."""
    times = {(r["case"], r["threads"], r["runtime"]): r["median_s"] for r in records}
    rows = ["| case | threads | fastest allowed µs | set by | fastgru µs | allowed / fastgru "
            "| best float32 peer | its µs | peer / allowed | peer / fastgru | goal |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["runtime"] != "fastgru" or r["case"] not in GOALS:
            continue
        case, threads = SHAPES[r["case"]], r["threads"]
        allowed, limit = fastest_allowed(case, threads, ceiling[threads])
        peers = {p: times[(case.name, threads, p)] for p in FLOAT32_PEERS
                 if (case.name, threads, p) in times}
        cells = [case.name, str(threads), f"{allowed * 1e6:.0f}", limit,
                 f"{r['median_s'] * 1e6:.0f}", f"{allowed / r['median_s']:.0%}"]
        if peers:
            best = min(peers, key=peers.get)
            cells += [best, f"{peers[best] * 1e6:.0f}", f"{peers[best] / allowed:.2f}",
                      f"{peers[best] / r['median_s']:.2f}", f"{GOALS[case.name]:.2f}"]
        else:
            cells += ["-"] * 5
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def int8_limits_table(records, ceiling) -> str:
    """Per shape: the fastest an int8 call can be here (fastest_allowed with int8 weights) and
    fastgru-int8's time as a share of that."""
    rows = ["| case | threads | fastest allowed µs | set by | fastgru-int8 µs "
            "| allowed / fastgru-int8 |", "|---|---|---|---|---|---|"]
    for r in records:
        if r["runtime"] != "fastgru-int8" or r["case"] == "S1":
            continue
        allowed, limit = fastest_allowed(SHAPES[r["case"]], r["threads"], ceiling[r["threads"]],
                                         itemsize=1)
        rows.append(f"| {r['case']} | {r['threads']} | {allowed * 1e6:.0f} | {limit} "
                    f"| {r['median_s'] * 1e6:.0f} | {allowed / r['median_s']:.0%} |")
    return "\n".join(rows)


def ceilings_table(ceiling) -> str:
    sizes = next(iter(ceiling.values()))["read_GBps"]
    rows = ["| threads | fused multiply-add peak GFLOP/s | int8 (vpdpbusd) peak GOP/s | "
            + " | ".join(f"read of {int(n) / 1e6:.2f} MB GB/s" for n in sizes)
            + " | NumPy 2048² matrix product GFLOP/s | NumPy matvec over 3H×H weights, H=256 "
            "(786 KB) GB/s | H=1024 (12.6 MB) GB/s |", "|---" * (6 + len(sizes)) + "|"]
    for t, c in ceiling.items():
        int8_peak = f"{c['int8_gops']:.1f}" if "int8_gops" in c else "-"
        rows.append(f"| {t} | {c['fma_gflops']:.1f} | {int8_peak} | "
                    + " | ".join(f"{c['read_GBps'][n]:.1f}" for n in sizes)
                    + f" | {c['sgemm_gflops']:.1f} | {c['matvec_GBps_H256']:.1f} "
                    f"| {c['matvec_GBps_H1024']:.1f} |")
    return "\n".join(rows)


LIMITS_NOTE = (
    "\"Fastest allowed\": a shape's multiply-adds at the fused multiply-add peak above (nothing "
    "doing them in float32 on these cores is faster), or fetching each layer-direction's "
    "recurrent weights once a step at the read rate above for their size, less what the "
    "threads' nearer caches can keep from the step before (their L2s where the weights exceed "
    "them, else their L1s), whichever takes longer. "
    "\"Peer / allowed\" is the most any float32 code could be ahead of the best float32 peer "
    "here; issue 15's goal for fastgru is beside it.")


INT8_LIMITS_NOTE = (
    "As for float32, with int8 weights: the multiply-adds at the int8 peak above (vpdpbusd, "
    "where the CPU has AVX512_VNNI; else the fused multiply-add peak, as the widened path "
    "multiplies in float32), or the int8 recurrent weights (a quarter of float32's bytes) "
    "fetched once a step at the read rate for their size, whichever takes longer. Quantizing "
    "the activations and the gates are not counted.")


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
    runtimes = ["fastgru", "fastgru-bf16", "fastgru-int8", "onnxruntime", "torch", "torch-int8"]
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
             "fastgru is faster.", "", "### Ceilings measured in the same run "
             "(`python bench/ceilings.py`)", "", ceilings_table(ceiling)]
    lines += ["", "### S1-S6 (DESIGN.md)", "", table(records, list(SHAPES.values())), ""]
    lines += ["### bfloat16", "", precision_table(records, "fastgru-bf16", "openvino",
                                                  "OpenVINO default"), ""]
    lines += ["### int8", "", precision_table(records, "fastgru-int8", "torch-int8",
                                              "torch-int8"), ""]
    lines += ["### What the ceilings allow (float32)", "", LIMITS_NOTE, "",
              limits_table(records, ceiling), ""]
    lines += ["### What the ceilings allow (int8)", "", INT8_LIMITS_NOTE, "",
              int8_limits_table(records, ceiling), ""]
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


def precision_table(records, ours: str, theirs: str, label: str) -> str:
    """fastgru in a narrower precision (`ours`: "fastgru-bf16", "fastgru-int8") against its own
    float32 and a peer's run in the same kind of precision (`theirs`, shown as `label`): times,
    and each one's largest difference from onnxruntime's float32 outputs (which are within 4e-7
    of float64 on these shapes)."""
    by = {(r["case"], r["threads"], r["runtime"]): r for r in records}
    rows = [f"| case | threads | {ours} µs | fastgru float32 / {ours} | {label} µs "
            f"| {label} / {ours} | {ours} max diff | {label} max diff |",
            "|---|---|---|---|---|---|---|---|"]
    for (case, threads, runtime), r in by.items():
        if runtime != ours:
            continue
        f32 = by[(case, threads, "fastgru")]
        peer = by.get((case, threads, theirs))
        cells = ["-", "-", "-"] if peer is None else [
            f"{peer['median_s'] * 1e6:.1f}", f"{peer['median_s'] / r['median_s']:.2f}",
            f"{peer['max_abs_diff']:.1e}"]
        rows.append(f"| {case} | {threads} | {r['median_s'] * 1e6:.1f} "
                    f"| {f32['median_s'] / r['median_s']:.2f} | {cells[0]} | {cells[1]} "
                    f"| {r['max_abs_diff']:.1e} | {cells[2]} |")
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
