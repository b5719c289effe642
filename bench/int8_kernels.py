"""The int8 products against the float32 one (products.matvec on each), alone.

    python bench/int8_kernels.py [--rounds 3]

For the recurrent weights of S2 (H=256: 768 x 256) and S6 (H=1024: 3072 x 1024), at batch 1 and
16: microseconds per product, GB/s of weights read (float32: 4 bytes a weight, int8: 1) and the
ratio of float32's time to each int8 path's. Each kernel runs in its own process, the kernels
taking turns round after round; within a process each product is warmed up, then timed in a
compiled loop (no Python call per product) that alternates the order of the panels as the GRU
kernels do, median of 15 samples of many calls; the figure is the median over rounds. The vnni
times include quantizing the activations, as every step of a GRU will.

State the CPU and the load (printed) beside any figure: only ratios of one run compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
from numba import njit

from fastgru.kernels import cpu, layout, operands, products
from fastgru.kernels import int8_pack as int8

SHAPES = {"S2": 256, "S6": 1024}
BATCHES = (1, 16)


# Not cached: Numba keys a cache entry on its own file only, and these loops carry the kernels
# they call compiled in, so a cached loop would time a kernel as it was when the loop was cached
@njit
def _repeat_float32(n, v, wp, out):
    for i in range(n):
        products.matvec(v, wp, out, 0, v.shape[0], 0, wp.shape[0], i % 2 == 1)


@njit
def _repeat_int8(n, v, w, q, out):
    for i in range(n):  # the activations quantized at every product, as a step does
        products.matvec(operands.operand(v, w, q, 0, v.shape[0]), w, out, 0, v.shape[0], 0,
                        w.words.shape[0], i % 2 == 1)


@njit
def _scratch(w, rows, inputs):
    return operands.operand_scratch(w, rows, inputs)


def _operands(kernel: str, H: int, B: int):
    """(a function of n that runs n products, the weights' bytes, the outputs' error)."""
    rng = np.random.default_rng(H + B)
    w = (rng.standard_normal((3 * H, H)) / np.sqrt(H)).astype(np.float32)
    v = rng.standard_normal((B, H)).astype(np.float32)
    exact = v.astype(np.float64) @ w.T.astype(np.float64)
    if kernel == "float32":
        packed = layout.pack_gate_rows(w, H)
        wp = cpu.empty_aligned(packed.shape, np.float32)  # as the model aligns them
        wp[...] = packed
        out = np.empty((B, wp.shape[0] * wp.shape[2]), np.float32)

        def run(n):
            _repeat_float32(n, v, wp, out)
        nbytes = w.nbytes
    else:
        q, s = int8.quantize_weights(w)
        packed8 = int8.pack(q, s, H, path=kernel)
        scratch = _scratch(packed8, B, H)
        out = np.empty((B, packed8.words.shape[0] * int8.PANEL), np.float32)

        def run(n):
            _repeat_int8(n, v, packed8, scratch, out)
        nbytes = q.nbytes
    run(1)
    Hp = -(-H // int8.PANEL) * int8.PANEL
    got = out[:, (np.arange(3)[:, None] * Hp + np.arange(H)).ravel()]
    return run, nbytes, float(np.abs(got - exact).max() / np.abs(exact).max())


def measure(kernel: str) -> dict:
    """Seconds per product for every shape and batch, in this process."""
    results = {}
    for name, H in SHAPES.items():
        for B in BATCHES:
            run, nbytes, error = _operands(kernel, H, B)
            run(50)  # warm: caches, branch predictors, clocks
            start = time.perf_counter()
            run(20)
            once = (time.perf_counter() - start) / 20
            n = max(5, int(0.02 / once))
            samples = []
            for _ in range(15):
                start = time.perf_counter()
                run(n)
                samples.append((time.perf_counter() - start) / n)
            results[f"{name} B={B}"] = dict(seconds=float(np.median(samples)), bytes=nbytes,
                                            error=error)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: measure this kernel
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    kernels = ("float32",) + int8.PATHS
    print(f"CPU: {platform.processor() or platform.machine()}, {_cpu_name()}; "
          f"int8 paths {int8.PATHS}; 1 thread")
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    rounds: dict[str, list[dict]] = {k: [] for k in kernels}
    for _ in range(args.rounds):
        for kernel in kernels:
            done = subprocess.run([sys.executable, __file__, "--one", kernel], check=True,
                                  capture_output=True, text=True,
                                  env={**os.environ, "NUMBA_NUM_THREADS": "1"})
            rounds[kernel].append(json.loads(done.stdout.splitlines()[-1]))
    print(f"load average at end: {os.getloadavg()[0]:.2f}\n")
    header = "| shape | kernel | us | GB/s of weights | float32 time / this | max rel. error |"
    print(header)
    print("|---|---|---|---|---|---|")
    for case in rounds["float32"][0]:
        base = np.median([r[case]["seconds"] for r in rounds["float32"]])
        for kernel in kernels:
            seconds = float(np.median([r[case]["seconds"] for r in rounds[kernel]]))
            first = rounds[kernel][0][case]
            print(f"| {case} | {kernel} | {seconds * 1e6:.2f} | "
                  f"{first['bytes'] / seconds / 1e9:.0f} | {base / seconds:.2f} | "
                  f"{first['error']:.1e} |")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            fields = {k.strip(): v for k, v in (line.split(":", 1) for line in f if ":" in line)}
        return (f"{fields['model name'].strip()} (family {fields['cpu family'].strip()} "
                f"model {fields['model'].strip()})")
    except (OSError, KeyError, ValueError):
        return "unknown CPU"


if __name__ == "__main__":
    main()
