"""The recurrent product kernel alone (fastgru.kernels.products.matvec), on the calling thread.

    python bench/kernels.py

Prints, for 3H x H float32 weights packed as a model packs them, the weight bandwidth at batch 1
and the GFLOP/s at batches 16 and 64: the numbers to hold against the machine's ceilings in
bench/RESULTS.md. Compile for another CPU with NUMBA_CPU_NAME / NUMBA_CPU_FEATURES (and a
separate NUMBA_CACHE_DIR) to see that target's register tiles.
"""

from __future__ import annotations

import time

import numpy as np

from fastgru.kernels import layout, products
from fastgru.kernels.cpu import FOUR_ROW_TILES, VECTOR_BYTES


def median_seconds(function, args: tuple, repeat: int) -> float:
    function(*args)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(repeat):
            function(*args)
        times.append((time.perf_counter() - start) / repeat)
    return float(np.median(times))


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"vector bytes {VECTOR_BYTES}, 4-row tiles: {FOUR_ROW_TILES}\n")
    print("| H | weights KB | batch 1 GB/s | batch 16 GFLOP/s | batch 64 GFLOP/s |")
    print("|---|---|---|---|---|")
    for H in (128, 256, 512, 1024):
        w = rng.standard_normal((3 * H, H)).astype(np.float32)
        packed = layout.pack_gate_rows(w, H)
        cells = []
        for B in (1, 16, 64):
            v = rng.standard_normal((B, H)).astype(np.float32)
            out = np.empty((B, packed.shape[0] * packed.shape[2]), np.float32)
            args = (v, packed, out, 0, B, 0, packed.shape[0], False)
            seconds = median_seconds(products.matvec, args, max(3, int(3e7 / (B * w.size))))
            expected = v.astype(np.float64) @ w.T.astype(np.float64)
            Hp = layout.padded_units(H, np.float32)  # gate g's unit u is column g*Hp + u
            got = out[:, (np.arange(3)[:, None] * Hp + np.arange(H)).ravel()]
            assert np.allclose(got, expected, atol=1e-3), "matvec disagrees with NumPy"
            cells.append(w.nbytes / seconds / 1e9 if B == 1 else 2 * B * w.size / seconds / 1e9)
        print(f"| {H} | {w.nbytes // 1000} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
