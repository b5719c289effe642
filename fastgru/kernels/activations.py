"""sigmoid and tanh for the kernels, chosen per dtype at compile time.

float64 uses libm's exact functions. float32 uses a vectorizable exp of its own (`_exp_f32`):
Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for exp(r) (the
Cephes expf coefficients) and 2^n built from its exponent bits, with only multiplies, adds,
compares and bit moves, so LLVM vectorizes the gate loops around it. Then

    sigmoid(v) = 1 / (1 + e) for v >= 0, e / (1 + e) below, with e = exp(-|v|) <= 1
    tanh(v)    = v + v^3 P(v^2)                    for |v| < 0.625 (Cephes tanhf's polynomial)
               = sign(v) (1 - 2 / (exp(2|v|) + 1))  beyond

Measured over the float32 range (tests/test_activations.py, 24M values): sigmoid within 2.3 ulp
and tanh within 1.3 ulp of the exact value wherever it is a normal float32 (mean signed error
below 0.02 ulp: no lean either way), NaN passing through and large |v| saturating to exactly 0,
1 or +-1. The earlier rational approximation of tanh (and sigmoid through it) was
biased by up to 2.3e-7 near 1, which slow units (update gate near 1) summed over long sequences
(issue 11). Clamps are written with comparisons so NaN stays NaN.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# exp(x) is computed for x in [_EXP_LO, _EXP_HI]. At the bottom n = -127 gives exactly 0 (from
# x < -87.68, where exp(x) is below float32's smallest normal 2^-126), at the top n = 128 gives
# inf: the limits that make sigmoid and tanh saturate exactly.
_EXP_LO = -88.0
_EXP_HI = 88.72283935546875
_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375  # ln 2 = _LN2_HI + _LN2_LO, the high part exact in 9 bits
_LN2_LO = -2.12194440e-4
_ROUND = 12582912.0  # 1.5 * 2^23: adding it rounds a float32 to an integer, kept in the low bits
_EXP_POLY = (5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3,
             1.3981999507e-3, 1.9875691500e-4)
_TANH_SMALL = 0.625
_TANH_POLY = (-3.33332819422e-1, 1.33314422036e-1, -5.37397155531e-2, 2.06390887954e-2,
              -5.70498872745e-3)


def tanh(v):
    """tanh(v) within 1.5 ulp for float32, exact for float64 (use inside njit code)."""
    return np.tanh(v)


def sigmoid(v):
    """1 / (1 + exp(-v)) within 2.5 ulp for float32, exact for float64 (use inside njit code)."""
    return 1.0 / (1.0 + np.exp(-v))


@intrinsic
def _exponent_bits(typingctx, rounded):
    """2^n as a float32, from `rounded` = n + _ROUND (float32, |n| < 2^22): the integer n sits in
    rounded's low mantissa bits, so (bits + 127) << 23 is the float32 with exponent n (n in
    [-126, 127]; 128 gives inf)."""
    if rounded != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        biased = builder.add(bits, ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(biased, ir.Constant(i32, 23)), ir.FloatType())

    return types.float32(types.float32), codegen


@njit(inline="always")
def _exp_f32(v):
    f = np.float32
    x = f(_EXP_HI) if v > f(_EXP_HI) else (f(_EXP_LO) if v < f(_EXP_LO) else v)
    rounded = x * f(_LOG2E) + f(_ROUND)
    n = rounded - f(_ROUND)
    r = x - n * f(_LN2_HI)
    r = r - n * f(_LN2_LO)
    p = f(_EXP_POLY[5])
    p = p * r + f(_EXP_POLY[4])
    p = p * r + f(_EXP_POLY[3])
    p = p * r + f(_EXP_POLY[2])
    p = p * r + f(_EXP_POLY[1])
    p = p * r + f(_EXP_POLY[0])
    p = p * (r * r) + r + f(1.0)
    return p * _exponent_bits(rounded)


def _sigmoid_f32(v):
    e = _exp_f32(-abs(v))
    return (np.float32(1.0) if v >= np.float32(0.0) else e) / (np.float32(1.0) + e)


def _tanh_f32(v):
    f = np.float32
    a = abs(v)
    a2 = a * a
    p = f(_TANH_POLY[4])
    p = p * a2 + f(_TANH_POLY[3])
    p = p * a2 + f(_TANH_POLY[2])
    p = p * a2 + f(_TANH_POLY[1])
    p = p * a2 + f(_TANH_POLY[0])
    small = p * a2 * a + a
    large = f(1.0) - f(2.0) / (_exp_f32(a + a) + f(1.0))
    t = small if a < f(_TANH_SMALL) else large  # NaN takes `large`, which stays NaN
    return t if v >= f(0.0) else -t


@overload(tanh)
def _tanh_overload(v):
    if isinstance(v, types.Float) and v.bitwidth == 32:
        return _tanh_f32
    return lambda v: np.tanh(v)


@overload(sigmoid)
def _sigmoid_overload(v):
    if isinstance(v, types.Float) and v.bitwidth == 32:
        return _sigmoid_f32
    return lambda v: 1.0 / (1.0 + np.exp(-v))
