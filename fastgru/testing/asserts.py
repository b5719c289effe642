"""assert_close: an array against a reference at the tolerance of the model's dtype."""

from __future__ import annotations

import numpy as np

__all__ = ["TOLERANCE", "assert_close"]

# |fastgru - reference| <= ATOL + RTOL * |reference|, per dtype of the model under test.
TOLERANCE = {"float32": (1e-5, 1e-4), "float64": (1e-10, 1e-9)}


def assert_close(actual, expected, dtype="float32", what=""):
    """actual and expected of the same shape agree elementwise within TOLERANCE[dtype]; the
    failure names `what`, the largest difference and where it is."""
    atol, rtol = TOLERANCE[str(np.dtype(dtype))]
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert np.all(err <= bound), (
        f"{what}: max |diff| {err.max():.3g} exceeds {atol} + {rtol}*|ref| at {worst}")
