"""The measuring tools in tools/ measure what they say."""

from __future__ import annotations

import os
import sys

import numpy as np

from fastgru.kernels import gru as kernels

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tools"))
import gate_loops  # noqa: E402


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
