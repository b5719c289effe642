"""bfloat16 models: weights rounded to bfloat16; inputs, states, gates and outputs float32.

Three kernel paths (fastgru/kernels/bfloat16.py): weights widened to float32 as they are read
(every CPU), bfloat16 dot products with the operands rounded too (CPUs with AVX512_BF16), and the
same products on AMX tiles (CPUs with AMX). Every test runs on each path this CPU has, slower
paths forced on CPUs that have faster ones; tests/amx_emulator.py also runs the tile kernel's
blocking on any CPU, with the tile instructions modelled from Intel's description. Checked
against independent sources: torch's float32 -> bfloat16 rounding, the float64 reference of
fastgru/testing/reference.py on the rounded weights (and, on the paired paths, on operands rounded by
torch), and on a trained network's long sequence, PyTorch's own bfloat16 GRU.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

import fastgru
from fastgru.testing.asserts import assert_close
from fastgru.testing.models import random_spec, spec_layers
from fastgru._weights import bfloat16_bits
from fastgru.cli import main
from fastgru.kernels import layout, products
from fastgru.kernels.bfloat16 import PATHS, pack, round_to_pairs
from fastgru.testing.reference import reference_gru
from fastgru.testing.torch_models import run_torch
from fastgru.testing.trained import long_input, max_error, trained

WEIGHTS = {"widen": np.uint16, "dot": np.uint32, "tiles": np.int32}


@pytest.fixture(params=PATHS)
def path(request):
    """The kernel path the test's models are built for (GRU(..., kernel_path=path))."""
    return request.param


def torch_bf16(a) -> np.ndarray:
    """float64 values of torch's rounding of a (as float32) to bfloat16."""
    return torch.from_numpy(np.asarray(a, np.float32)).to(torch.bfloat16).double().numpy()


def rounded_reference(spec, x, path, **options):
    """The float64 reference on the bfloat16 weights (biases as float32), with the operands
    rounded to bfloat16 on the paired paths."""
    layers = [(torch_bf16(w), torch_bf16(r), np.asarray(b, np.float32).astype(np.float64))
              for w, r, b in spec_layers(spec)]
    return reference_gru(x, layers, direction=spec.direction,
                         linear_before_reset=spec.linear_before_reset,
                         operand=None if path == "widen" else torch_bf16, **options)


def test_rounding_matches_torch(rng):
    # halfway cases (ties go to even), just either side, signs, subnormals, the largest floats
    low = np.array([0x8000, 0x7FFF, 0x8001, 0x0000, 0xFFFF], np.uint32)
    high = rng.integers(0, 1 << 16, 4000, dtype=np.uint32)
    high = high[(high & 0x7F80) != 0x7F80]  # finite values only (weights are checked finite)
    bits = (high[:, None] << 16 | low[None, :]).reshape(-1)
    values = np.concatenate([bits.view(np.float32), rng.standard_normal(10_000, np.float32),
                             np.float32([3.3895e38, -3.3895e38, 1e-40, -0.0])])
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy()
    assert np.array_equal(bfloat16_bits(values), expected.view(np.uint16))
    # The kernels' rounding of operands into pairs: the same, except that subnormal values give
    # zeros of their sign. Rows of 7 values are rounded one value at a time, rows of 37 also a
    # vector at a time; both odd counts, whose last pair is half empty.
    subnormal = (values.view(np.uint32) & 0x7F800000) == 0
    assert subnormal.sum() >= 50
    operands = np.where(subnormal, np.copysign(np.float32(0), values), values)
    for K in (7, 37):
        n = len(values) // K * K
        v, halves = values[:n].reshape(-1, K), bfloat16_bits(operands[:n].reshape(-1, K))
        pairs = np.full((len(v), (K + 1) // 2 + 2), 0xDEADBEEF, np.uint32)  # 2 of padding
        round_to_pairs(v, pairs, 0, len(v))
        assert np.array_equal(pairs[:, :(K + 1) // 2] & 0xFFFF, halves[:, 0::2])
        assert np.array_equal(pairs[:, :K // 2] >> 16, halves[:, 1::2])
        assert np.all(pairs[:, K // 2] >> 16 == 0) and np.all(pairs[:, (K + 1) // 2:] == 0)


# NaNs whose bits a carry of the rounding took past the exponent (0x7FFFFFFF to -0, 0xFFFFFFFF to
# +0) or into it (0x7F800001, a signalling NaN, to inf)
NAN_BITS = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0xFF800001, 0x7FC00000], np.uint32)


def test_a_path_this_cpu_does_not_run_is_refused(rng):
    with pytest.raises(ValueError, match=r"kernel_path must be one of \(.*'widen'.*\) for "
                                         r"bfloat16 on this CPU, got 'banana'"):
        fastgru.GRU(random_spec(rng, 3, 4), dtype="bfloat16", kernel_path="banana")
    # the argument names a bfloat16 (or int8) variant: float precisions ignore it
    assert fastgru.GRU(random_spec(rng, 3, 4), kernel_path="widen").precision == "float32"


def test_rounding_keeps_nans():
    """Operands rounded into pairs: a NaN stays a NaN of its sign, quiet (the float32 of its top
    half: what vcvtneps2bf16 gives), at the positions rounded a vector at a time and those rounded
    one at a time (K=37: values 0-31 by vectors, 32-36 alone)."""
    K = 37
    v = np.ones((len(NAN_BITS), K), np.float32)
    for at in (0, 17, 31, 32, 35, 36):
        v[:, at] = NAN_BITS.view(np.float32)
    pairs = np.zeros((len(v), (K + 1) // 2), np.uint32)
    round_to_pairs(v, pairs, 0, len(v))
    halves = np.stack([pairs & 0xFFFF, pairs >> 16], axis=-1).reshape(len(v), -1)[:, :K]
    expected = (NAN_BITS[:, None] >> 16) | 0x40  # the sign and payload's top, made quiet
    nan = np.isnan(v)
    assert np.array_equal(halves[nan], np.broadcast_to(expected, v.shape)[nan])
    assert np.all(halves[~nan] == 0x3F80)  # 1.0


@pytest.mark.parametrize("H", [80, 20])  # 20: units 16-19 of the state are rounded one at a time
def test_nan_in_gives_nan_out(path, H):
    """NaN of every bit pattern in x (at a feature rounded a vector at a time, 3, or alone, 19)
    or in h0 (unit 2, or H-2) makes its row's outputs NaN; every other row stays finite."""
    rng = np.random.default_rng(7)
    spec = random_spec(rng, 21, H, 2, "forward", True, scale=0.3)
    model = fastgru.GRU(spec, dtype="bfloat16", kernel_path=path)
    cases = [(where, at, bits) for bits in NAN_BITS[:3] for where, at in
             (("x", 3), ("x", 19), ("h0", 2), ("h0", H - 2))]
    B = len(cases) + 2  # the first and last rows clean
    x = rng.standard_normal((4, B, 21)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (2, B, H)).astype(np.float32)
    for b, (where, at, bits) in enumerate(cases, 1):
        target = x[0, b] if where == "x" else h0[0, b]
        target.view(np.uint32)[at] = bits
    y, h_n = model(x, h0)
    for b, case in enumerate(cases, 1):
        assert np.isnan(y[:, b]).all() and np.isnan(h_n[:, b]).all(), (case, y[:, b])
    for b in (0, B - 1):
        assert np.isfinite(y[:, b]).all() and np.isfinite(h_n[:, b]).all()


def product_case(rng, path, rows, inputs):
    """A product for the kernels of `path`: 3 gates of 40 units (panels with padding columns),
    rows x inputs random operands. Returns (operand, panels, out full of NaN, expected, scale):
    the float64 sums on the operands as the path rounds them, in the kernel's float32 columns,
    and the sums of magnitudes within whose K eps float32 sums err."""
    H = 40
    w = rng.standard_normal((3 * H, inputs)).astype(np.float32)
    v = rng.standard_normal((rows, inputs)).astype(np.float32)
    panels = pack(bfloat16_bits(layout.pack_gate_rows(w, H)), path)
    operand = v
    if path != "widen":
        operand = np.full((rows, panels.shape[1]), 0xFFFFFFFF, np.uint32)  # padding: NaN pairs
        round_to_pairs(v, operand, 0, rows)
    out = np.full((rows, panels.shape[0] * panels.shape[2]), np.nan, np.float32)
    v64 = v.astype(np.float64) if path == "widen" else torch_bf16(v)

    def columns(a):  # (rows, 3H) -> the kernel's float32 columns, each gate padded
        return layout.pad_gate_columns(a.astype(np.float32), H)

    return (operand, panels, out, columns(v64 @ torch_bf16(w).T),
            columns(np.abs(v64) @ np.abs(torch_bf16(w)).T))


@pytest.mark.parametrize("rows, inputs, backwards", [(1, 64, False), (1, 64, True),
                                                    (7, 37, False), (7, 37, True),
                                                    (16, 256, False)])
def test_matvec_against_float64(rng, path, rows, inputs, backwards):
    operand, panels, out, expected, scale = product_case(rng, path, rows, inputs)
    products.matvec(operand, panels, out, 0, rows, 0, panels.shape[0], backwards)
    assert np.all(np.abs(out - expected) <= 1e-6 * scale + 1e-30)


@pytest.mark.parametrize("rows, inputs, b0, p0, backwards", [
    (1, 64, 0, 0, False), (5, 33, 1, 1, True), (16, 7, 0, 0, False), (37, 96, 3, 1, False),
    (37, 96, 3, 1, True)])
def test_tile_kernel_on_modelled_tiles(rng, rows, inputs, b0, p0, backwards):
    """The AMX kernel's blocking (row blocks of 16 and their remainders, panels in either order,
    pairs padded to whole tiles) on a model of the tile instructions (tests/amx_emulator.py), on
    any CPU: its sums match float64 on the rounded operands, it writes exactly rows b0.. and
    panels p0.., and no tile reads or writes outside the arrays."""
    from amx_emulator import emulated

    from fastgru.kernels.amx import matvec_tiles

    operand, panels, out, expected, scale = product_case(rng, "tiles", rows, inputs)
    assert panels.dtype == np.int32 and panels.shape[1] % 16 == 0
    with emulated([operand, panels, out]):
        matvec_tiles.py_func(operand, panels, out, b0, rows, p0, panels.shape[0], backwards)
    c0 = p0 * panels.shape[2]
    assert np.all(np.abs(out[b0:, c0:] - expected[b0:, c0:]) <= 1e-6 * scale[b0:, c0:] + 1e-30)
    assert np.isnan(out[:b0]).all() and np.isnan(out[:, :c0]).all()


CONFIGS = [  # (D, H, num_layers, direction, linear_before_reset, B, lengths)
    (16, 32, 1, "forward", True, 3, None),
    (13, 40, 2, "bidirectional", False, 5, [30, 1, 17, 0, 29]),
    (7, 96, 1, "reverse", True, 1, None),  # B=1: hidden units shared among threads
    (24, 64, 2, "forward", False, 9, None),  # 9 rows: blocks of rows on each thread
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[3]}-L{c[2]}-lbr{int(c[4])}-B{c[5]}")
def test_one_step_matches_the_rounded_reference(rng, path, config):
    """From a float32 state, one step sees exactly the operands the reference rounds: the
    float32 tolerance holds on both paths."""
    D, H, L, direction, lbr, B, _ = config
    spec = random_spec(rng, D, H, L, direction, lbr, scale=1.5 / np.sqrt(H))
    model = fastgru.GRU(spec, dtype="bfloat16", kernel_path=path)
    dirs = 2 if direction == "bidirectional" else 1
    x = rng.standard_normal((1, B, D)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (L * dirs, B, H)).astype(np.float32)
    y, h_n = model(x, h0)
    ry, rh = rounded_reference(spec, x, path, h0=h0)
    assert_close(y, ry, "float32", "y")
    assert_close(h_n, rh, "float32", "h_n")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[3]}-L{c[2]}-lbr{int(c[4])}-B{c[5]}")
def test_sequence_matches_the_rounded_reference(rng, path, config):
    D, H, L, direction, lbr, B, lengths = config
    spec = random_spec(rng, D, H, L, direction, lbr, scale=1.5 / np.sqrt(H))
    model = fastgru.GRU(spec, dtype="bfloat16", kernel_path=path)
    x = rng.standard_normal((30, B, D)).astype(np.float32)
    y, h_n = model(x, lengths=lengths)
    ry, rh = rounded_reference(spec, x, path, lengths=lengths)
    if path == "widen":  # only the weights are rounded: float32 accuracy on those weights
        assert_close(y, ry, "float32", "y")
        assert_close(h_n, rh, "float32", "h_n")
        # and exactly what a float32 model of the same (rounded) weights computes
        same = fastgru.GRU(model.spec, dtype="float32")(x, lengths=lengths)
        assert np.array_equal(y, same[0]) and np.array_equal(h_n, same[1])
    else:  # operands rounded each step: a state a float32 rounding away from the reference's
        # can round to the neighbouring bfloat16, so the reference is followed to bfloat16, not
        # float32, accuracy over a sequence; without the operands rounded it is much further off
        unrounded = rounded_reference(spec, x, "widen", lengths=lengths)[0]
        assert np.abs(y - ry).max() <= 2e-3
        assert np.abs(y - ry).max() < 0.5 * np.abs(y - unrounded).max()


def test_rows_and_steps_agree_bit_for_bit(rng, path):
    """A row's result does not depend on its batch neighbours, and streaming step by step gives
    the whole call's outputs exactly."""
    spec = random_spec(rng, 12, 80, 2, "forward", True, scale=0.2)
    model = fastgru.GRU(spec, dtype="bfloat16", kernel_path=path)
    x = rng.standard_normal((20, 6, 12)).astype(np.float32)
    y, h_n = model(x)
    alone, _ = model(x[:, 4:5])
    assert np.array_equal(alone, y[:, 4:5])
    stream = model.stream(6)
    steps = np.stack([stream.step(x[t]) for t in range(20)])
    assert np.array_equal(steps, y)


def test_every_entry_point(rng, path, tmp_path, capsys):
    module = torch.nn.GRU(10, 48, num_layers=2, batch_first=True).eval()
    x = rng.standard_normal((3, 25, 10)).astype(np.float32)
    model = fastgru.GRU(fastgru.GRU.from_torch(module).spec, batch_first=True, dtype="bfloat16",
                        kernel_path=path).prepare()  # every kernel it can use
    assert model.precision == "bfloat16" and model.dtype == np.float32
    assert "dtype=bfloat16" in repr(model)
    assert model._packed.r.dtype == WEIGHTS[path]
    y, _ = model(x)
    assert y.dtype == np.float32
    # the spec shows the rounded weights that run: a float32 model of them is the same network
    assert np.array_equal(model.spec.layers[0].r[0], torch_bf16(module.weight_hh_l0.detach())
                          [np.r_[48:96, 0:48, 96:144]])  # PyTorch's (r, z, n) -> (z, r, n)

    pt = tmp_path / "gru.pt"
    torch.save(module.state_dict(), pt)
    onnx_path = tmp_path / "gru.onnx"
    fastgru.GRU.from_torch(module).to_onnx(onnx_path)
    again = pickle.loads(pickle.dumps(model))  # the path it was built for
    assert again.precision == "bfloat16" and np.array_equal(again(x)[0], y)
    # the entry points take the CPU's fastest path
    y = y if path == PATHS[-1] else fastgru.GRU(model.spec, batch_first=True,
                                                dtype="bfloat16")(x)[0]
    for loaded in (fastgru.load(pt, batch_first=True, dtype="bfloat16"),
                   fastgru.GRU.from_onnx(onnx_path, dtype="bfloat16"),
                   fastgru.load(onnx_path, dtype="bfloat16")):
        assert loaded.precision == "bfloat16"
        assert np.array_equal(loaded(x)[0], y)
    saved = tmp_path / "gru.safetensors"
    model.save(saved)
    again = fastgru.load(saved)
    assert again.precision == "bfloat16" and np.array_equal(again(x)[0], y)

    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    assert main(["run", str(pt), "--dtype", "bfloat16", "--batch-first", "--input",
                 str(tmp_path / "x.npy"), "--output", str(out)]) == 0
    assert np.array_equal(np.load(out), y)
    capsys.readouterr()
    assert main(["info", str(pt), "--dtype", "bfloat16"]) == 0
    assert "dtype:               bfloat16" in capsys.readouterr().out


def test_long_trained_sequence(path):
    """A trained network with slow units over 3,000 steps. Rounding the weights to bfloat16
    makes a slightly different network: fastgru follows that network's float64 outputs to
    float32 accuracy (widening), or adds at most as much error again (dot products, operands
    rounded), and stays far closer to the float64 truth than PyTorch's bfloat16 GRU."""
    module = trained("slow-units")
    x = long_input(np.random.default_rng(5), 3_000, 2, module.input_size)
    truth = run_torch(module.double(), x.astype(np.float64))
    module.float()
    with torch.no_grad():  # NumPy has no bfloat16: PyTorch's outputs are widened to compare
        theirs = [a.float().numpy() for a in
                  copy.deepcopy(module).bfloat16()(torch.from_numpy(x).bfloat16())]
    model = fastgru.GRU(fastgru.GRU.from_torch(module).spec, dtype="bfloat16", kernel_path=path)
    rounded = fastgru.GRU(model.spec, dtype="float64")(x.astype(np.float64))
    error, floor, peer = (max_error(y, truth) for y in (model(x), rounded, theirs))
    print(f"\n{path}: fastgru bfloat16 {error:.2e}, the rounded network in float64 {floor:.2e}, "
          f"PyTorch bfloat16 {peer:.2e}")
    assert error <= (floor * 1.01 + 1e-5 if path == "widen" else 2 * floor)
    assert error <= 0.1 * peer
