#!/usr/bin/env python
"""Memory over many calls with varying shapes: the process's resident size must level off.

    .venv/bin/python bench/memory.py [--calls 100000]

Prints the resident set size (RSS) every tenth of the run and the number of compiled kernel
signatures; both should stop growing after the first few thousand calls.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import fastgru
from fastgru.kernels import gru as kernels
from fastgru.kernels import products


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def signatures() -> int:
    return sum(len(k.signatures) for k in (products.matvec, products.project, kernels.gru_layer,
                                            kernels.gru_layer_serial, kernels.gru_layer_columns,
                                            kernels.gru_stream_step))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    state = {"weight_ih_l0": rng.standard_normal((96, 8)),
             "weight_hh_l0": rng.standard_normal((96, 32)),
             "weight_ih_l1": rng.standard_normal((96, 32)),
             "weight_hh_l1": rng.standard_normal((96, 32))}
    model = fastgru.GRU.from_torch(state)
    stream = model.stream(4)
    dtypes = [np.float32, np.float64, np.int32]
    print("| calls | RSS MB | kernel signatures |\n|---|---|---|")
    for i in range(args.calls):
        T, B = int(rng.integers(1, 40)), int(rng.integers(1, 20))
        x = rng.standard_normal((T, B, 8)).astype(dtypes[i % 3])
        if i % 5 == 0:
            x = np.asfortranarray(x)
        model(x, lengths=rng.integers(0, T + 1, B))
        stream.step(x[0, :1].repeat(4, axis=0))
        if (i + 1) % max(1, args.calls // 10) == 0:
            print(f"| {i + 1} | {rss_mb():.1f} | {signatures()} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
