#!/usr/bin/env python
"""fastgru's bfloat16 paths against its float32, on this CPU, one thread.

    .venv/bin/python tools/bfloat16_paths.py [--shapes S2,S3,S4,S6] [--rounds 6]

Every path this CPU runs (kernels/bfloat16.py): the widening path (weights widened to float32
as they are read) is what CPUs without AVX512_BF16 run, the dot products what those without AMX
run; where the CPU has faster paths each is named here (GRU(..., kernel_path=)), to measure them
side by side. The models run alternating in this one process, medians of each round's median.
"""

from __future__ import annotations

import argparse
import sys

import numba
import numpy as np

import fastgru
from fastgru.benchmark import SHAPES, builtin_model, median_seconds
from fastgru.kernels.cpu import BF16_PATHS as PATHS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="S2,S3,S4,S6")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    numba.set_num_threads(1)
    print("| shape | float32 µs | " + " | ".join(f"bf16 {p} µs | float32 / {p}" for p in PATHS)
          + " |\n|---|---|" + "---|---|" * len(PATHS))
    for name in args.shapes.split(","):
        case = SHAPES[name]
        models = {"float32": builtin_model(case)}
        for path in PATHS:
            models[path] = fastgru.GRU(models["float32"].spec, dtype="bfloat16", kernel_path=path)
        x = np.random.default_rng(1).standard_normal(
            (case.steps, case.batch, case.input_size)).astype(np.float32)
        rounds = {label: [] for label in models}
        for _ in range(args.rounds):
            for label, model in models.items():
                model(x)
                rounds[label].append(median_seconds(lambda m=model, x=x: m(x), 0.4, 3))
        us = {label: np.median(r) * 1e6 for label, r in rounds.items()}
        cells = [f"{us[p]:.0f} | {us['float32'] / us[p]:.2f}" for p in PATHS]
        print(f"| {name} | {us['float32']:.0f} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
