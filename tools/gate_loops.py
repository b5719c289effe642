#!/usr/bin/env python
"""The gate loops alone (sigmoid, tanh, the update and their copies) on this CPU, one thread.

    .venv/bin/python tools/gate_loops.py [--shapes S2,S3,S4] [--rounds 3]

Runs the gate loops of each shape's first layer (gru.gate_loops and gru.update_loops, the
loops the layer kernels inline after their products) over every step and row group, with no
product, on random pre-activations, and prints ns per unit: per hidden unit of one batch row
for one step. Together with the products' speed (bench/kernels.py) it tells where a CPU spends
a step; readings per CPU are in bench/RESULTS.md ("Gate loops").
"""

from __future__ import annotations

import argparse
import sys

import numba
import numpy as np
from numba import njit

from fastgru.benchmark import SHAPES, builtin_model, median_seconds
from fastgru.kernels import gru
from fastgru.kernels.borrow import borrowed
from fastgru.kernels.runtime import JIT_OPTIONS


# Not cached: Numba would key the cache on this file alone, not on the gate loops it inlines
@njit(**dict(JIT_OPTIONS, cache=False))
def layer_without_products(xproj, bx, rbn, h, acc, hr, lengths, reverse, lbr, clip, y, group):
    """gru.gru_layer_serial's time loop with the products left out: every step of every row
    group runs the gate loops on whatever acc holds (the previous step's gate values)."""
    B = xproj.shape[1]
    Hp = acc.shape[2] // 3
    xproj, bx, rbn, h, acc, hr, lengths, y = borrowed(xproj, bx, rbn, h, acc, hr, lengths, y)
    for d in range(bx.shape[0]):
        for s in range(xproj.shape[0]):
            for g0 in range(0, B, group):
                g1 = min(g0 + group, B)
                gru.gate_loops(xproj, d, bx[d], rbn[d], h[d], acc[d], hr[d], g0, g1, 0, Hp, s,
                               lengths, reverse[d], lbr, clip)
                gru.update_loops(xproj, d, bx[d], h[d], h[d], acc[d], g0, g1, 0, Hp, s, lengths,
                                 reverse[d], clip, y)


def layer_arguments(packed, T: int, B: int, seed: int = 3) -> tuple:
    """layer_without_products' arguments for the first layer of `packed`, T steps of B rows:
    random pre-activations, zero state and scratch."""
    dirs, H, Hp, dt = packed.num_directions, packed.hidden_size, packed.padded_units, packed.dtype
    rng = np.random.default_rng(seed)
    xproj = (2 * rng.standard_normal((T, B, dirs * 3 * Hp))).astype(dt)
    bx, _, rbn = packed.layer_arrays[0]
    return (xproj, bx, rbn, np.zeros((dirs, B, H), dt), np.zeros((dirs, B, 3 * Hp), dt),
            np.zeros((dirs, B, H), dt), np.full(B, T, np.int64), packed.reverse,
            packed.linear_before_reset, packed.clip, np.zeros((T, B, dirs * H), dt),
            packed.row_group)


def ns_per_unit(case, rounds: int) -> list[float]:
    packed = builtin_model(case)._packed
    T, B, H = case.steps, case.batch, case.hidden_size
    args = layer_arguments(packed, T, B)

    def layer():  # h and acc carry over from call to call, bounded: no reset is timed
        layer_without_products(*args)

    layer()  # compiles
    units = T * B * H * packed.num_directions
    return [median_seconds(layer, 0.4, 3) / units * 1e9 for _ in range(rounds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="S2,S3,S4")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    numba.set_num_threads(1)
    print("| shape | gate loops, ns per unit (one value per round) |\n|---|---|")
    for name in args.shapes.split(","):
        rounds = ns_per_unit(SHAPES[name], args.rounds)
        print(f"| {name} | {', '.join(f'{r:.2f}' for r in rounds)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
