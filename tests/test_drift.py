"""Long sequences through trained-like models: fastgru's float32 error against a float64 truth is
at most onnxruntime's and PyTorch's on the same weights, and within the float32 tolerance.

The truth is the same network in float64: torch.nn.GRU .double() for linear_before_reset=1, the
slow reference written from the equations (fastgru/testing/reference.py) for
linear_before_reset=0, which PyTorch does not have. Models come from fastgru/testing/trained.py
(trained in the setup, seeded); `tools/accuracy.py` prints the same cases as a table.
"""

from __future__ import annotations

import pytest

from fastgru.testing.asserts import assert_close
from fastgru.testing.trained import CASES, long_sequence_errors


def _case_id(case) -> str:
    name, steps, lengths, lbr = case
    return f"{name}-T{steps}{'-lengths' if lengths else ''}-lbr{int(lbr)}"


@pytest.mark.parametrize("case", [
    pytest.param(case, id=_case_id(case), marks=[pytest.mark.slow] if case[1] > 2_000 else [])
    for case in CASES])
def test_long_sequence_error_at_most_the_peers(case):
    errors, ours, truth = long_sequence_errors(*case)
    for peer in ("onnxruntime", "PyTorch"):
        if peer in errors:
            assert errors["fastgru"] <= errors[peer], f"{_case_id(case)}: {errors}"
    for actual, expected, what in zip(ours, truth, ("y", "h_n"), strict=True):
        assert_close(actual, expected, "float32", f"{_case_id(case)} {what}")
    if "fastgru float64" in errors:  # float64 models follow the same truth to float64 rounding
        assert errors["fastgru float64"] < 1e-10, errors
