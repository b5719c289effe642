"""sigmoid and tanh for the kernels, chosen per dtype at compile time.

float32 uses a clamped rational approximation of tanh (the 13/6 form Eigen and onnxruntime's
MLAS use): only multiplies, adds, one divide and compares, so LLVM vectorizes the gate loops.
Its absolute error is below 4e-7 over the whole float32 range. float64 keeps libm's exact
functions. The clamp is written with comparisons so NaN stays NaN.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

_CLAMP = 7.90531110763549805  # tanh(x) rounds to +-1 in float32 beyond this
_ALPHA = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
          5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
          -2.76076847742355e-16)
_BETA = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
         1.19825839466702e-06)


def tanh(v):
    """tanh(v), float32 approximated, float64 exact (use inside njit code)."""
    return np.tanh(v)


def sigmoid(v):
    """1 / (1 + exp(-v)), float32 approximated, float64 exact (use inside njit code)."""
    return 1.0 / (1.0 + np.exp(-v))


def _tanh_f32(v):
    f = np.float32
    c = f(_CLAMP)
    x = c if v > c else (-c if v < -c else v)
    x2 = x * x
    p = f(_ALPHA[6])
    p = p * x2 + f(_ALPHA[5])
    p = p * x2 + f(_ALPHA[4])
    p = p * x2 + f(_ALPHA[3])
    p = p * x2 + f(_ALPHA[2])
    p = p * x2 + f(_ALPHA[1])
    p = p * x2 + f(_ALPHA[0])
    q = f(_BETA[3])
    q = q * x2 + f(_BETA[2])
    q = q * x2 + f(_BETA[1])
    q = q * x2 + f(_BETA[0])
    return x * p / q


@overload(tanh)
def _tanh_overload(v):
    if isinstance(v, types.Float) and v.bitwidth == 32:
        return _tanh_f32
    return lambda v: np.tanh(v)


@overload(sigmoid)
def _sigmoid_overload(v):
    if isinstance(v, types.Float) and v.bitwidth == 32:
        half = np.float32(0.5)
        return lambda v: half + half * tanh(half * v)
    return lambda v: 1.0 / (1.0 + np.exp(-v))
