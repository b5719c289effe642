"""int8 weights (fastgru/kernels/int8_pack.py, int8.py and the int8 side of products.py): per-row weight quantization, per-row
activation quantization, and the two product paths ("vnni": vpdpbusd on uint8 x int8; "widen":
int8 widened to float32), each run on this CPU whichever it would pick, the widened one also
compiled for an AVX2 CPU.

Checked against NumPy written from the rules in int8_pack.py's and int8.py's docstrings, not
from their code: the activations' bytes, zero points and scales bit for bit; the vnni products
bit for bit against the exact integer sums (int64) converted and scaled in the kernel's order,
and within 2 ulp against float64 on the dequantized operands; the widened products bit for bit
against the float32 product kernel on the int8 values as float32 (the same chain of
multiply-adds), then scaled, and within the error bound of that chain against float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from llvmlite import binding as llvm_binding

from fastgru.kernels import cpu, products
from fastgru.kernels import int8_pack as int8
from test_reference import HASWELL_FEATURES, compiled_for


@pytest.fixture(params=int8.PATHS)
def path(request):
    return request.param


# --- NumPy models of the rules -----------------------------------------------------------------

def quantize_activations(v):
    """(bytes (B, K) uint8, zero (B,) int64, scale (B,) float32) by the documented rule."""
    v = np.asarray(v, np.float32)
    B, K = v.shape
    codes, zero, scale = np.zeros((B, K), np.uint8), np.zeros(B, np.int64), np.zeros(B, np.float32)
    for b in range(B):
        row = v[b]
        if not np.isfinite(row).all():
            scale[b] = np.nan
            continue
        lo = min(np.float32(0), row.min()) if K else np.float32(0)
        hi = max(np.float32(0), row.max()) if K else np.float32(0)
        s = np.float32((np.float64(hi) - np.float64(lo)) / 255)
        scale[b] = s
        if not s > 0:
            continue
        z = np.clip(np.rint(np.float32(-lo) / s), 0, 255)
        zero[b] = int(z)
        codes[b] = np.clip(np.rint(row / s) + np.float32(z), 0, 255).astype(np.uint8)
    return codes, zero, scale


def exact_sums(v, q):
    """S[b, r] = sum_k (a_q[b, k] - z[b]) q[r, k] in int64, with the activations' scales."""
    codes, zero, scale = quantize_activations(v)
    S = (codes.astype(np.int64) - zero[:, None]) @ q.astype(np.int64).T
    assert np.abs(S).max(initial=0) < 2 ** 31
    return S, codes, zero, scale


def vnni_expected(v, q, s):
    """The vnni product as the kernel orders it: float32(S) * (s_w * s_a), all float32."""
    S, _, _, sa = exact_sums(v, q)
    with np.errstate(invalid="ignore", over="ignore"):
        return S.astype(np.float32) * (s[None, :] * sa[:, None])


def unpad(y, rows, hidden_size=None):
    """The packed columns of `rows` output rows, in row order."""
    H = rows if hidden_size is None else hidden_size
    Hp = -(-H // int8.PANEL) * int8.PANEL
    r = np.arange(rows)
    return y[:, r // H * Hp + r % H]


def widened_expected(v, q, s, hidden_size=None):
    """The float32 product (products.matvec) over the int8 values as float32 (exact), times s_w: the
    widened path's chain of fused multiply-adds over k in order, then its scaling. The float32
    panels are the widened path's own int8 panels converted (the same layout as float32 panels:
    the float64 comparisons check that layout independently)."""
    rows = q.shape[0]
    panels = int8.pack(q, s, hidden_size, "widen").words.astype(np.float32)
    out = np.empty((len(v), panels.shape[0] * panels.shape[2]), np.float32)
    products.matvec(np.ascontiguousarray(v, np.float32), panels, out, 0, len(v), 0, panels.shape[0],
               False)
    with np.errstate(invalid="ignore", over="ignore"):
        return unpad(out, rows, hidden_size) * s


def expected(v, q, s, path, hidden_size=None):
    if path == "vnni":
        return vnni_expected(v, q, s)
    return widened_expected(v, q, s, hidden_size)


def run(v, q, s, path, hidden_size=None):
    """The kernel's product, unpadded to (B, rows)."""
    y = products.product(v, int8.pack(q, s, hidden_size, path))
    return unpad(y, q.shape[0], hidden_size)


def float64_reference(v, q, s, path):
    """sum_k a[b, k] w[r, k] in float64 on the dequantized weights, and on the dequantized
    activations for vnni."""
    dq = q.astype(np.float64) * s.astype(np.float64)[:, None]
    if path == "vnni":
        codes, zero, scale = quantize_activations(v)
        a = (codes.astype(np.float64) - zero[:, None]) * scale.astype(np.float64)[:, None]
    else:
        a = np.asarray(v, np.float64)
    return a @ dq.T, np.abs(a) @ np.abs(dq).T


def random_weights(rng, rows, K, scale=0.3):
    return int8.quantize_weights(scale * rng.standard_normal((rows, K)))


# --- weights ------------------------------------------------------------------------------------

def test_weight_quantization(rng):
    w = rng.standard_normal((40, 33)) * rng.uniform(1e-3, 10, (40, 1))
    w[3] = 0.0
    w[5] = -np.abs(w[5])  # the largest magnitude is negative: -127
    w[7, :] = 1e-44  # scale underflows float32: a zero row
    q, s = int8.quantize_weights(w)
    assert q.dtype == np.int8 and s.dtype == np.float32
    assert np.all(np.abs(q) <= 127)
    np.testing.assert_array_equal(s, (np.abs(w).max(axis=1) / 127).astype(np.float32))
    live = s > 0
    assert list(np.flatnonzero(~live)) == [3, 7]
    assert np.all(q[~live] == 0)
    assert np.all(np.abs(q[live]).max(axis=1) == 127) and q[5].min() == -127
    err = np.abs(q.astype(np.float64) * s[:, None].astype(np.float64) - w)
    assert np.all(err[live] <= s[live, None].astype(np.float64) * (0.5 + 1e-6))


def test_weights_must_be_finite():
    w = np.ones((3, 4))
    w[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2 holds NaN or inf"):
        int8.quantize_weights(w)
    with pytest.raises(ValueError, match="2-D"):
        int8.quantize_weights(np.ones(4))


def test_pack_errors():
    q = np.zeros((64, 8), np.int8)
    s = np.ones(64, np.float32)
    with pytest.raises(ValueError, match="path must be one of"):
        int8.pack(q, s, path="avx512")
    with pytest.raises(ValueError, match="multiple of hidden_size"):
        int8.pack(q, s, hidden_size=30)
    with pytest.raises(ValueError, match="int8 rows"):
        int8.pack(q.astype(np.int16), s)
    with pytest.raises(ValueError, match=r"activations must be \(B, 8\)"):
        products.product(np.zeros((2, 9), np.float32), int8.pack(q, s, path="widen"))


@pytest.mark.skipif(not int8.VNNI, reason="the vnni path needs AVX512_VNNI")
def test_vnni_refuses_more_inputs_than_int32_sums_hold():
    q = np.zeros((1, int8.MAX_INPUTS + 1), np.int8)
    with pytest.raises(ValueError, match="at most 65536 inputs"):
        int8.pack(q, np.ones(1, np.float32), path="vnni")


def test_paths_follow_the_cpu():
    assert int8.PATHS[0] == "widen"
    has_vnni = bool(llvm_binding.get_host_cpu_features().get("avx512vnni"))
    assert int8.VNNI == (has_vnni and cpu.VECTOR_BYTES == 64)
    assert ("vnni" in int8.PATHS) == int8.VNNI


# --- activations --------------------------------------------------------------------------------

def quantized_by_kernel(v):
    v = np.ascontiguousarray(v, np.float32)
    B, K = v.shape
    G = -(-K // 4)
    q = int8.Quantized(np.full((B, G), 0xDEADBEEF, np.uint32), np.full(B, -7, np.int32),
                       np.full(B, -7, np.float32))
    int8.quantize_rows(v, q, 0, B)
    return q.words.view(np.uint8).reshape(B, 4 * G), q.zero, q.scale


def test_activation_quantization_bit_for_bit(rng):
    K = 37  # not a multiple of 4: three padding bytes
    rows = [rng.standard_normal(K) * 3, np.abs(rng.standard_normal(K)),  # one sign: z = 0
            -np.abs(rng.standard_normal(K)) - 2,  # all negative: z = 255
            np.zeros(K), np.full(K, -0.0), np.full(K, 0.75),
            np.r_[-128, 127, np.arange(-17, 18) + 0.5],  # s_a = 1, z = 128: ties to even
            np.r_[3e38, -3e38, np.zeros(K - 2)],  # range beyond float32: s_a from float64
            np.r_[1e-44, np.zeros(K - 1)],  # range too small for s_a: a zero row
            np.r_[1e-30, -1e-30, np.zeros(K - 2)],  # tiny but normal scale
            np.r_[np.float32(2.0) ** -140, np.zeros(K - 1)],  # subnormal scale
            rng.standard_normal(K) * 1e6]
    v = np.array(rows, np.float32)
    codes, zero, scale = quantized_by_kernel(v)
    want_codes, want_zero, want_scale = quantize_activations(v)
    np.testing.assert_array_equal(scale, want_scale)
    np.testing.assert_array_equal(zero, want_zero)
    np.testing.assert_array_equal(codes[:, :K], want_codes)
    assert np.all(codes[:, K:] == 0)
    assert zero[1] == 0 and zero[2] == 255 and codes[2, :K].min() == 0
    assert scale[3] == scale[4] == scale[8] == 0 and np.all(codes[8] == 0)
    # the extremes of a row land on 0 and 255 exactly: saturation by the clamp
    assert codes[0, :K].min() == 0 and codes[0, :K].max() == 255


def test_activation_nan_and_inf_give_a_nan_scale(rng):
    v = rng.standard_normal((4, 9)).astype(np.float32)
    v[1, 3] = np.nan
    v[2, 0] = np.inf
    v[3, 8] = -np.inf
    codes, zero, scale = quantized_by_kernel(v)
    assert np.isnan(scale[1:]).all() and np.isfinite(scale[0])
    assert np.all(codes[1:] == 0) and np.all(zero[1:] == 0)


# --- products -----------------------------------------------------------------------------------

@pytest.mark.parametrize("B, rows, K, H", [(1, 192, 64, None), (1, 300, 70, 100), (5, 64, 1, None),
                                           (16, 768, 256, 256), (13, 96, 37, 32), (3, 64, 0, None)])
def test_product_matches_the_rule_bit_for_bit(rng, path, B, rows, K, H):
    q, s = random_weights(rng, rows, K)
    v = rng.standard_normal((B, K)).astype(np.float32)
    y = run(v, q, s, path, H)
    np.testing.assert_array_equal(y, expected(v, q, s, path, H))
    ref, magnitude = float64_reference(v, q, s, path)
    if path == "vnni":  # three float32 roundings of exact values
        assert np.all(np.abs(y - ref) <= 2.0 ** -22 * np.abs(ref) + 1e-37)
    else:  # a chain of K fused multiply-adds
        assert np.all(np.abs(y - ref) <= (K + 2) * 2.0 ** -24 * magnitude + 1e-37)


def test_integer_sums_exact_at_the_extremes(path):
    """Activations -128..127 over a row (s_a = 1, z = 128, a_q = a + 128), weights at +-127 and
    -128 with scale 1: every output is its integer sum, exactly, for both paths."""
    K, rows = 512, 64
    v = np.tile(np.arange(-128, 128, dtype=np.float32), (3, K // 256))
    v[1] = v[1, ::-1]
    v[2] = np.where(np.arange(K) % 2, -128, 127)
    q = np.where((np.arange(rows)[:, None] + np.arange(K)) % 3 == 0, -127, 127).astype(np.int8)
    q[0], q[1] = 127, -127
    q[2] = -128  # int8 values imported as they are (torch's quantize_dynamic) may hold -128
    ones = np.ones(rows, np.float32)
    S = v.astype(np.int64) @ q.astype(np.int64).T
    assert np.abs(S).max() < 2 ** 24  # exact in float32
    _, zero, scale = quantize_activations(v)
    assert np.all(scale == 1) and np.all(zero == 128)
    np.testing.assert_array_equal(run(v, q, ones, path), S.astype(np.float32))


@pytest.mark.skipif(not int8.VNNI, reason="the vnni path needs AVX512_VNNI")
def test_vnni_sums_do_not_overflow_at_the_bound():
    """K = MAX_INPUTS inputs, each product at its largest, |a_q - z| = 255 times |q| = 127:
    S = +-2,122,383,360, just inside int32, with start values (-z times the column sums) as
    large."""
    K = int8.MAX_INPUTS
    q = np.full((64, K), 127, np.int8)
    q[1::2] = -127
    v = np.ones((2, K), np.float32)
    v[1] = -1  # a row of one negative value: z = 255, a_q = 0
    s = np.full(64, 1 / 127, np.float32)
    S, codes, zero, _ = exact_sums(v, q)
    assert S[0, 0] == -S[1, 0] == K * 255 * 127 and codes[0].min() == 255 == zero[1]
    y = run(v, q, s, "vnni")
    np.testing.assert_array_equal(y, vnni_expected(v, q, s))
    assert np.all(np.isfinite(y)) and np.all(np.sign(y) == np.sign(S))


def test_nan_stays_in_its_row(rng, path):
    q, s = random_weights(rng, 128, 50)
    v = rng.standard_normal((6, 50)).astype(np.float32)
    v[1, 7] = np.nan
    v[4, 49] = np.nan
    v[5, 0] = np.inf if path == "vnni" else np.nan
    y = run(v, q, s, path)
    assert np.isnan(y[[1, 4, 5]]).all()
    clean = [0, 2, 3]
    assert np.isfinite(y[clean]).all()
    np.testing.assert_array_equal(y[clean], run(v[clean], q, s, path))


def test_zero_rows_give_zeros(rng, path):
    q, s = random_weights(rng, 64, 20)
    q[5], s[5] = 0, 0  # a zero weight row
    v = rng.standard_normal((3, 20)).astype(np.float32)
    v[1] = 0
    y = run(v, q, s, path)
    assert np.all(y[1] == 0) and np.all(y[:, 5] == 0)


def test_rows_independent_of_batch_tiles_and_order(rng, path):
    """Each row of a 13-row batch (4-row tiles, then 2 and 1; 2-row tiles on AVX2) equals, bit
    for bit, the row alone (batch 1: two panels at a time), and any split of rows and panels,
    forwards or backwards, gives the same bits."""
    rows, K, B = 5 * int8.PANEL, 45, 13
    q, s = random_weights(rng, rows, K)
    v = rng.standard_normal((B, K)).astype(np.float32)
    w = int8.pack(q, s, path=path)
    whole = products.product(v, w)
    for b in range(B):
        np.testing.assert_array_equal(products.product(v[b:b + 1], w)[0], whole[b], f"row {b}")
    panels = w.words.shape[0]
    operand = v  # the widened path multiplies the floats; vnni their bytes, quantized per row
    if path == "vnni":
        operand = int8.Quantized(np.zeros((B, w.words.shape[1]), np.uint32),
                                 np.zeros(B, np.int32), np.zeros(B, np.float32))
        int8.quantize_rows(v, operand, 0, B)
    out = np.full_like(whole, np.nan)
    for b0, b1, p0, p1, backwards in ((0, 3, 0, 2, True), (3, 4, 0, 5, False),
                                      (4, 13, 2, 5, True), (0, 3, 2, 5, False),
                                      (4, 13, 0, 2, False)):
        products.matvec(operand, w, out, b0, b1, p0, p1, backwards)
    np.testing.assert_array_equal(out, whole)
    assert panels == 5


def test_gate_columns_follow_gru_panels(rng, path):
    """With hidden_size, gate g's unit u lands in column g*Hp + u (Hp: H rounded up to whole
    panels, as float32 models pad their gates), and the padding columns hold zeros."""
    H, K = 70, 24
    q, s = random_weights(rng, 3 * H, K)
    v = rng.standard_normal((2, K)).astype(np.float32)
    y = products.product(v, int8.pack(q, s, H, path))
    Hp = 2 * int8.PANEL  # 70 units padded to whole panels
    assert y.shape == (2, 3 * Hp)
    np.testing.assert_array_equal(y.reshape(2, 3, Hp)[:, :, H:], 0)
    np.testing.assert_array_equal(unpad(y, 3 * H, H), expected(v, q, s, path, H))


def test_widened_error_against_float32_weights(rng):
    """What int8 costs against float32 weights, here at batch 1: within the weights' rounding
    (s_w / 2 per weight) on the widened path, and that plus the activations' on vnni."""
    K, rows = 256, 768
    w = rng.standard_normal((rows, K)) / 16
    v = rng.standard_normal((1, K)).astype(np.float32)
    q, s = int8.quantize_weights(w)
    exact = v.astype(np.float64) @ w.T
    bound = np.abs(v.astype(np.float64)) @ np.broadcast_to(s[:, None] / 2, (rows, K)).T
    y = run(v, q, s, "widen")
    assert np.all(np.abs(y - exact) <= bound * 1.001 + 1e-6)


# --- an AVX2 build ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not all(llvm_binding.get_host_cpu_features().get(f) for f in ("avx2", "fma")),
                    reason="runs code compiled for an AVX2 CPU, so needs one")
def test_avx2_build_widens(tmp_path):
    """Compiled for Haswell (no AVX-512, no VNNI) in a fresh process: only the widened path,
    32-byte vectors and 2-row tiles, and its products equal products.matvec's on the int8 values as
    float32, bit for bit, for rows alone and in a batch, with NaN kept in its row."""
    code = """if True:
        import numpy as np
        from fastgru.kernels import cpu
        from fastgru.kernels import int8_pack as int8
        from test_int8 import run, widened_expected, random_weights
        assert int8.PATHS == ("widen",) and not int8.VNNI
        assert int8.LANES == 8 and int8.PANEL == 32 and not cpu.FOUR_ROW_TILES
        rng = np.random.default_rng(5)
        for B, rows, K, H in ((1, 96, 50, None), (7, 3 * 40, 33, 40), (16, 768, 256, 256)):
            q, s = random_weights(rng, rows, K)
            v = rng.standard_normal((B, K)).astype(np.float32)
            if B == 7:
                v[3, 5] = np.nan
            y = run(v, q, s, "widen", H)
            assert np.array_equal(y, widened_expected(v, q, s, H), equal_nan=True), (B, rows)
            if B == 7:
                assert np.isnan(y[3]).all() and np.isfinite(np.delete(y, 3, 0)).all()
                for b in range(B):
                    assert np.array_equal(run(v[b:b + 1], q, s, "widen", H)[0], y[b],
                                          equal_nan=True), b
        print("checked")
    """
    stdout = compiled_for("haswell", HASWELL_FEATURES, code, tmp_path)
    assert stdout.strip() == "checked"
