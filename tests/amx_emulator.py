"""A software model of the AMX tile instructions fastgru's tile kernel uses, written from Intel's
description of them (ldtilecfg, tilezero, tileloadd, tilestored, tdpbf16ps), so the kernel's
blocking runs and is checked on CPUs without AMX.

`emulated(arrays)` swaps the model in for the kernel's intrinsics; the kernel's Python source
(`matvec_tiles.py_func`) then runs against it. Every row a tile reads or writes must lie inside
one of `arrays`: a read past an operand or a panel fails the test instead of reading garbage.
"""

from __future__ import annotations

import contextlib
import ctypes

import numpy as np

from fastgru.kernels import amx

ROW_BYTES = 64


class TileUnit:
    def __init__(self, arrays):
        self.spans = [(a.ctypes.data, a.ctypes.data + a.nbytes) for a in arrays]
        self.rows = None
        self.tiles = None

    def _check(self, address):
        assert any(lo <= address and address + ROW_BYTES <= hi for lo, hi in self.spans), \
            "a tile row outside every array"

    def configure(self, rows):
        assert 1 <= rows <= 16
        self.rows = [rows] * 5 + [amx.TILE_PAIRS] * 3
        self.tiles = [np.zeros((r, ROW_BYTES), np.uint8) for r in self.rows]  # ldtilecfg zeroes

    def zero(self, t):
        self.tiles[t][:] = 0

    def load(self, t, address, stride):
        for i in range(self.rows[t]):
            self._check(address + i * stride)
            self.tiles[t][i] = np.frombuffer(ctypes.string_at(address + i * stride, ROW_BYTES),
                                             np.uint8)

    def store(self, t, address, stride):
        for i in range(self.rows[t]):
            self._check(address + i * stride)
            ctypes.memmove(address + i * stride, self.tiles[t][i].ctypes.data, ROW_BYTES)

    def dot(self, c, a, b):
        """tdpbf16ps: for each pair k in order, the even products, then the odd, each added to
        the float32 sum with one rounding (a product of two bfloat16 is exact in float32)."""
        assert self.rows[c] == self.rows[a] and self.rows[b] == ROW_BYTES // 4
        A = _widen(self.tiles[a]).reshape(self.rows[a], 16, 2)  # rows, pairs, (even, odd)
        B = _widen(self.tiles[b]).reshape(16, 16, 2)  # pairs, columns, (even, odd)
        C = self.tiles[c].view(np.float32)  # rows, columns
        for k in range(16):
            for half in (0, 1):
                C += A[:, k, half, None] * B[None, k, :, half]


def _widen(tile):
    """bfloat16 bits -> float32 values."""
    return (tile.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


@contextlib.contextmanager
def emulated(arrays):
    unit = TileUnit(arrays)
    swapped = {"tile_configure": unit.configure, "tile_zero": unit.zero, "tile_load": unit.load,
               "tile_store": unit.store, "tile_dot": unit.dot}
    saved = {name: getattr(amx, name) for name in swapped}
    for name, function in swapped.items():
        setattr(amx, name, function)
    try:
        yield unit
    finally:
        for name, function in saved.items():
            setattr(amx, name, function)
