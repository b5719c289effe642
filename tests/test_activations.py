"""The kernels' sigmoid and tanh against float64 NumPy, over the whole float32 range."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from fastgru.kernels.activations import sigmoid, tanh
from fastgru.kernels.runtime import FASTMATH

TINY = np.finfo(np.float32).tiny  # smallest normal float32


@njit(fastmath=FASTMATH, error_model="numpy")  # the kernels' flags, so the loops vectorize alike
def _apply(v, s, t):
    for i in range(v.size):
        s[i] = sigmoid(v[i])
    for i in range(v.size):
        t[i] = tanh(v[i])


def _activations(v):
    s, t = np.empty_like(v), np.empty_like(v)
    _apply(v, s, t)
    return s, t


def _exact(v):
    v64 = v.astype(np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-v64)), np.tanh(v64)


def _ulps(actual, exact):
    """Signed error in units in the last place of the float32 nearest to `exact`."""
    ulp = np.spacing(np.abs(exact.astype(np.float32))).astype(np.float64)
    return (actual.astype(np.float64) - exact) / ulp


@pytest.fixture(scope="module")
def sample():
    """20M random float32 bit patterns (every exponent equally likely) and a dense grid over
    [-20, 20], where the gates live."""
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**32, 20_000_000, dtype=np.uint64).astype(np.uint32)
    v = bits.view(np.float32)
    v = np.concatenate([v[np.isfinite(v)], np.linspace(-20, 20, 4_000_001, dtype=np.float32)])
    return v, _activations(v), _exact(v)


def test_float32_within_the_stated_ulp_bounds(sample):
    """README: sigmoid within 2.5 ulp, tanh within 1.5 ulp wherever the result is a normal
    float32 (measured on samples like this one: 2.29 and 1.31); below that (|result| < 2^-126)
    within 2^-126 absolute."""
    v, (s, t), (es, et) = sample
    for name, actual, exact, bound in (("sigmoid", s, es, 2.5), ("tanh", t, et, 1.5)):
        normal = np.abs(exact) >= TINY
        worst = np.abs(_ulps(actual[normal], exact[normal]))
        assert worst.max() <= bound, f"{name}: {worst.max():.3f} ulp at v={v[normal][worst.argmax()]}"
        assert np.all(np.abs(actual[~normal] - exact[~normal]) <= TINY), name


def test_float32_errors_do_not_lean_one_way(sample):
    """A bias adds up over a long sequence in units whose update gate is near 1: the mean
    signed error stays below 0.05 ulp in every band of |v|, both signs apart."""
    v, (s, t), (es, et) = sample
    for name, actual, exact in (("sigmoid", s, es), ("tanh", t, et)):
        for lo, hi in ((1e-3, 0.5), (0.5, 2), (2, 8), (8, 17)):
            for sign in (1, -1):
                band = (sign * v > lo) & (sign * v < hi) & (np.abs(exact) >= TINY)
                mean = _ulps(actual[band], exact[band]).mean()
                assert abs(mean) < 0.05, f"{name}: mean error {mean:.3f} ulp on {sign}*({lo}, {hi})"


def test_float32_special_values():
    v = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 88.0, -88.0, 104.0, -104.0, 1e30, -1e30],
                 np.float32)
    s, t = _activations(v)
    assert np.isnan(s[0]) and np.isnan(t[0])
    np.testing.assert_array_equal(s[1:], [1, 0, 0.5, 0.5, 1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(t[1:], [1, -1, 0, 0, 1, -1, 1, -1, 1, -1])


def test_float32_is_monotonic_on_a_dense_grid():
    v = np.linspace(-30, 30, 2_000_001, dtype=np.float32)
    s, t = _activations(v)
    assert np.all(np.diff(s) >= 0) and np.all(np.diff(t) >= 0)


def test_float64_uses_the_exact_functions():
    v = np.random.default_rng(3).uniform(-40, 40, 100_000)
    s, t = _activations(v)
    es, et = _exact(v)
    np.testing.assert_allclose(s, es, rtol=1e-15, atol=0)
    np.testing.assert_allclose(t, et, rtol=1e-15, atol=0)
