#!/usr/bin/env python
"""The gate loops alone (sigmoid, tanh, the update and their copies) on this CPU, one thread.

    .venv/bin/python tools/gate_loops.py [--shapes S2,S3,S4] [--rounds 3]

Runs the layer kernel of each shape's first layer with its products left out (a copy of
fastgru/kernels/gru.py whose matvec does nothing), on random pre-activations, and prints ns
per unit: per hidden unit of one batch row for one step. Together with the products' speed
(bench/kernels.py) it tells where a CPU spends a step: on the AMD EPYC (family 26) S3 took
0.84-0.93 ns a unit, on the lent Intel Xeon five times as much (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile

import numba
import numpy as np

from fastgru.benchmark import SHAPES, builtin_model, median_seconds
from fastgru.kernels import gru

PRODUCT_CALL = "    _product(v, wp, out, b0, b1, p0, p1, backwards)\n"


def kernels_without_products(folder: str):
    """A module compiled from gru.py's source with matvec's body removed, written to folder."""
    with open(gru.__file__) as f:
        source = f.read()
    if source.count(PRODUCT_CALL) != 1:
        raise SystemExit(f"gru.py's matvec no longer calls {PRODUCT_CALL.strip()!r} once: "
                         "update this tool")
    path = os.path.join(folder, "gru_without_products.py")
    with open(path, "w") as f:
        f.write(source.replace(PRODUCT_CALL, "    pass\n"))
    spec = importlib.util.spec_from_file_location("gru_without_products", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ns_per_unit(kernels, case, rounds: int) -> list[float]:
    model = builtin_model(case)
    T, B, H = case.steps, case.batch, case.hidden_size
    packed = model._packed
    dirs, Hp = packed.num_directions, packed.padded_units
    rng = np.random.default_rng(3)
    xproj = (2 * rng.standard_normal((T, B, dirs * 3 * Hp))).astype(np.float32)
    h, hr = np.zeros((dirs, B, H), np.float32), np.zeros((dirs, B, H), np.float32)
    acc = np.zeros((dirs, B, 3 * Hp), np.float32)
    y = np.zeros((T, B, dirs * H), np.float32)
    lengths = np.full(B, T, np.int64)

    def layer():  # h and acc carry over from call to call, bounded: no reset is timed
        kernels.gru_layer_serial(xproj, *packed.layer_arrays[0], h, acc, hr, lengths,
                                 packed.reverse, model.linear_before_reset, packed.clip, y, 1,
                                 packed.row_group)

    layer()  # compiles
    return [median_seconds(layer, 0.4, 3) / (T * B * H * dirs) * 1e9 for _ in range(rounds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="S2,S3,S4")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    numba.set_num_threads(1)
    print("| shape | gate loops, ns per unit (one value per round) |\n|---|---|")
    with tempfile.TemporaryDirectory(prefix="fastgru-gate-loops-") as folder:
        kernels = kernels_without_products(folder)
        for name in args.shapes.split(","):
            rounds = ns_per_unit(kernels, SHAPES[name], args.rounds)
            print(f"| {name} | {', '.join(f'{r:.2f}' for r in rounds)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
