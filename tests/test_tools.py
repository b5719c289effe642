"""The measuring tools in tools/ and bench/ measure what they say."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

import fastgru
from fastgru.kernels import gru as kernels
from fastgru.testing.models import random_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(path):
    """A script of tools/ or bench/ loaded from its path as the module its siblings import
    (bench/report.py's `from ceilings import ...`): no directory is put on sys.path, so that
    bench/conftest.py and bench/kernels.py shadow nothing."""
    name, path = os.path.splitext(os.path.basename(path))[0], os.path.join(ROOT, path)
    if getattr(sys.modules.get(name), "__file__", None) != path:
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


ceilings = _script("bench/ceilings.py")
_script("bench/cold_start.py")  # imported by report
report = _script("bench/report.py")
gate_loops = _script("tools/gate_loops.py")


@pytest.mark.parametrize("lbr", [True, False])
def test_gate_loops_leave_out_the_products_only(rng, lbr):
    """One step from a random state: the tool's loops give what the layer kernel gives when its
    products are zero (zero recurrent weights), bit for bit."""
    packed = fastgru.GRU(random_spec(rng, 5, 40, 1, "bidirectional", lbr))._packed
    args = gate_loops.layer_arguments(packed, 1, 3)
    xproj, bx, rbn, h, acc, hr, lengths, reverse, lbr, clip, y, group = args
    h[...] = rng.standard_normal(h.shape)
    zero_r = np.zeros_like(packed.layer_arrays[0][1])
    zero_r.setflags(write=False)  # as the model's own: the kernel's compiled signature
    h_kernel, y_kernel = h.copy(), y.copy()
    kernels.gru_layer_serial(xproj, bx, zero_r, rbn, h_kernel, acc.copy(), hr.copy(), lengths,
                             reverse, lbr, clip, y_kernel, 1, group)
    gate_loops.layer_without_products(*args)
    assert np.abs(y).max() > 0
    assert np.array_equal(y, y_kernel) and np.array_equal(h, h_kernel)


def test_ceilings_count_every_multiply_add_and_read_every_value_once_a_pass():
    threads, repeats = 2, 1000
    sums = np.zeros((threads, ceilings.SUMS * ceilings.LANES), np.float32)
    ceilings._multiply_adds(np.float32(1.0), repeats, sums)
    # each sum starts at its thread's number and gains 1 * 0.5 at each of its multiply-adds
    assert np.array_equal(sums, np.arange(threads)[:, None] + np.full(sums.shape, repeats * 0.5))
    block = threads * ceilings.READ_SUMS * ceilings.LANES
    values = np.ones(5 * block, np.float32)
    values[::7] = 2.0  # sums of small integers: exact in float32
    sums = np.zeros((threads, ceilings.READ_SUMS * ceilings.LANES), np.float32)
    ceilings._reads(values, 3, sums)
    assert sums.sum() == 3 * values.sum()
    half = values.size // threads  # thread t read part t only
    assert [sums[t].sum() for t in range(threads)] == [3 * values[t * half:(t + 1) * half].sum()
                                                       for t in range(threads)]


def test_fastest_allowed_takes_the_slower_of_multiply_adds_and_weight_reads(monkeypatch):
    monkeypatch.setattr(report, "L1_BYTES", 48 << 10)
    monkeypatch.setattr(report, "L2_BYTES", 1 << 20)
    read = {str(ceilings.recurrent_weight_bytes(H)): 100.0 for H in (256, 512, 1024)}
    ceiling = {"fma_gflops": 250.0, "read_GBps": read}
    S3, S6 = report.SHAPES["S3"], report.SHAPES["S6"]
    seconds, limit = report.fastest_allowed(S3, 1, ceiling)
    assert limit == "multiply-adds" and seconds == S3.flops / 250e9
    # S6: 12.6 MB of weights a step, at 100 GB/s, less the 1 MiB each thread's L2 keeps
    size = ceilings.recurrent_weight_bytes(1024)
    for threads in (1, 2):
        seconds, limit = report.fastest_allowed(S6, threads, ceiling)
        assert limit == "reads beyond L2"
        assert np.isclose(seconds, 50 * (size - threads * (1 << 20)) / 100e9)
    # S2's 786 KB fit L2: read from it, less an L1's worth, unless the arithmetic takes longer
    S2 = report.SHAPES["S2"]
    seconds, limit = report.fastest_allowed(S2, 1, ceiling)
    assert limit == "reads from L2"
    assert np.isclose(seconds, 100 * (ceilings.recurrent_weight_bytes(256) - (48 << 10)) / 100e9)
    seconds, limit = report.fastest_allowed(S2, 1, {**ceiling, "fma_gflops": 1.0})
    assert limit == "multiply-adds" and seconds == S2.flops / 1e9


@pytest.mark.skipif(not ceilings.VNNI, reason="vpdpbusd needs AVX512_VNNI")
def test_int8_ceiling_counts_every_byte_product():
    threads, repeats = 2, 1000
    sums = np.zeros((threads, ceilings.SUMS * ceilings.LANES), np.float32)
    weights = np.full(ceilings.LANES, 0x01FF0302, np.int32)  # bytes 2, 3, -1, 1 (signed)
    ceilings._byte_products(np.uint32(0x04030201), weights, repeats, sums)  # bytes 1, 2, 3, 4
    assert np.array_equal(sums, np.full(sums.shape, repeats * (1 * 2 + 2 * 3 - 3 + 4)))


def test_int8_fastest_allowed_takes_int8_bytes_and_peak(monkeypatch):
    monkeypatch.setattr(report, "L1_BYTES", 48 << 10)
    monkeypatch.setattr(report, "L2_BYTES", 1 << 20)
    read = {str(ceilings.recurrent_weight_bytes(1024, 1)): 100.0}
    ceiling = {"fma_gflops": 250.0, "int8_gops": 1000.0, "read_GBps": read}
    S6 = report.SHAPES["S6"]  # 3.1 MB of int8 weights a step, beyond one L2, within two
    seconds, limit = report.fastest_allowed(S6, 1, ceiling, itemsize=1)
    assert limit == "reads beyond L2"
    assert np.isclose(seconds, 50 * (ceilings.recurrent_weight_bytes(1024, 1) - (1 << 20)) / 100e9)
    slow = {**ceiling, "int8_gops": 100.0}
    seconds, limit = report.fastest_allowed(S6, 2, slow, itemsize=1)
    assert limit == "multiply-adds" and seconds == S6.flops / 100e9
    without = {k: v for k, v in slow.items() if k != "int8_gops"}  # widened: float32's peak
    assert report.fastest_allowed(S6, 2, {**without, "fma_gflops": 50.0},
                                  itemsize=1)[0] == S6.flops / 50e9
