#!/usr/bin/env python
"""fastgru's two bfloat16 paths against its float32, on this CPU, one thread.

    .venv/bin/python tools/bfloat16_paths.py [--shapes S2,S3,S4,S6] [--rounds 6]

The widening path (weights widened to float32 as they are read) is what CPUs without AVX512_BF16
run; where this CPU has AVX512_BF16 it is forced here, to measure it beside the dot products.
The three models run alternating in this one process, medians of each round's median.
"""

from __future__ import annotations

import argparse
import sys
import time

import numba
import numpy as np

import fastgru
from fastgru import _model
from fastgru.benchmark import SHAPES, builtin_model
from fastgru.kernels.simd import BF16_DOT_PRODUCTS


def median_seconds(call, seconds: float) -> float:
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="S2,S3,S4,S6")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    numba.set_num_threads(1)
    print("| shape | float32 µs | bf16 widened µs | float32 / widened | bf16 dot products µs "
          "| float32 / dot |\n|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        case = SHAPES[name]
        models = {"float32": builtin_model(case)}
        for label, pairs in (("widened", False), ("dot", True)):
            if pairs and not BF16_DOT_PRODUCTS:
                continue
            _model.BF16_PAIRS = pairs
            models[label] = fastgru.GRU(models["float32"].spec, dtype="bfloat16")
        _model.BF16_PAIRS = BF16_DOT_PRODUCTS
        x = np.random.default_rng(1).standard_normal(
            (case.steps, case.batch, case.input_size)).astype(np.float32)
        rounds = {label: [] for label in models}
        for _ in range(args.rounds):
            for label, model in models.items():
                model(x)
                rounds[label].append(median_seconds(lambda m=model, x=x: m(x), 0.4))
        us = {label: np.median(r) * 1e6 for label, r in rounds.items()}
        dot = (f"{us['dot']:.0f} | {us['float32'] / us['dot']:.2f}" if "dot" in us
               else "- | -")
        print(f"| {name} | {us['float32']:.0f} | {us['widened']:.0f} "
              f"| {us['float32'] / us['widened']:.2f} | {dot} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
