"""The measuring tools in tools/ and bench/ measure what they say."""

from __future__ import annotations

import os
import sys

import numpy as np

from fastgru.kernels import gru as kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# after everything else, so that bench/conftest.py and bench/kernels.py shadow nothing
sys.path += [os.path.join(ROOT, "tools"), os.path.join(ROOT, "bench")]
import ceilings  # noqa: E402
import gate_loops  # noqa: E402
import report  # noqa: E402


def test_gate_loops_leave_out_the_products_only(rng, tmp_path):
    without = gate_loops.kernels_without_products(str(tmp_path))
    H = 40
    panels = kernels.pack_gate_rows(rng.standard_normal((3 * H, 24)).astype(np.float32), H)
    v = rng.standard_normal((3, 24)).astype(np.float32)
    out = np.full((3, panels.shape[0] * panels.shape[2]), np.nan, np.float32)
    without.matvec(v, panels, out, 0, 3, 0, panels.shape[0], False)
    assert np.isnan(out).all()  # no product was computed
    kernels.matvec(v, panels, out, 0, 3, 0, panels.shape[0], False)
    assert np.isfinite(out).all()
    # everything else is gru.py's own code
    with open(kernels.__file__) as f:
        source = f.read()
    with open(tmp_path / "gru_without_products.py") as f:
        assert f.read() == source.replace(gate_loops.PRODUCT_CALL, "    pass\n")


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
