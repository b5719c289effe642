"""fastgru against the slow reference GRU written from the equations (fastgru/testing/reference.py)."""

from __future__ import annotations

import itertools
import os
import platform
import subprocess
import sys

import llvmlite.binding as llvm_binding
import numpy as np
import pytest

import fastgru
from fastgru.testing.asserts import assert_close
from fastgru.testing.models import random_spec, spec_layers
from fastgru.testing.reference import reference_gru

GRID = list(itertools.product(["forward", "reverse", "bidirectional"], [True, False], [1, 2, 3],
                              [True, False]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("direction, lbr, num_layers, bias", GRID)
def test_matches_reference(rng, direction, lbr, num_layers, bias, dtype):
    spec = random_spec(rng, 5, 7, num_layers, direction, lbr, bias)
    model = fastgru.GRU(spec, dtype=dtype)
    x = rng.standard_normal((6, 4, 5))
    h0 = rng.standard_normal((num_layers * spec.num_directions, 4, 7))
    lengths = np.array([6, 0, 3, 1])
    y, h_n = model(x, h0, lengths=lengths)
    y_ref, h_ref = reference_gru(x, spec_layers(spec), direction=direction,
                                 linear_before_reset=lbr, h0=h0, lengths=lengths)
    assert y.dtype == dtype and h_n.dtype == dtype
    assert_close(y, y_ref, dtype, "y")
    assert_close(h_n, h_ref, dtype, "h_n")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("direction, lbr", [("forward", True), ("reverse", False)])
def test_one_step_calls(rng, direction, lbr, threads, monkeypatch):
    """T=1 calls of a one-direction stack (a graph's streaming step) take the stream kernel,
    every layer in one call: every calling form agrees with the reference, and with a Stream
    bit for bit. Lengths with a 0 take the general path."""
    import numba

    monkeypatch.setattr(numba, "get_num_threads", lambda: threads)  # the paths' choice only
    spec = random_spec(rng, 5, 40, 2, direction, lbr, scale=0.3)
    model = fastgru.GRU(spec)
    x = rng.standard_normal((1, 3, 5)).astype(np.float32)
    h0 = rng.standard_normal((2, 3, 40)).astype(np.float32)
    for lengths in ([1, 1, 1], [1, 0, 1], None):
        y, h_n = model(x, h0, lengths=lengths)
        y_ref, h_ref = reference_gru(x, spec_layers(spec), direction=direction,
                                     linear_before_reset=lbr, h0=h0, lengths=lengths)
        assert_close(y, y_ref, "float32", f"y, lengths={lengths}")
        assert_close(h_n, h_ref, "float32", f"h_n, lengths={lengths}")
    y1, h1 = model(x[:, 1], h0[:, 1])  # unbatched
    assert np.array_equal(y1, y[:, 1]) and np.array_equal(h1, h_n[:, 1])
    first = fastgru.GRU(spec, batch_first=True)
    yb, hb = first(x.transpose(1, 0, 2), h0)
    assert np.array_equal(yb, y.transpose(1, 0, 2)) and np.array_equal(hb, h_n)
    if direction == "forward":
        stream = model.stream(3)
        stream.h = h0
        assert np.array_equal(stream.step(x[0]), y[0])


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("T, B, D, H", [(1, 1, 1, 1), (1, 3, 2, 5), (7, 1, 1, 3), (4, 2, 3, 1),
                                        (3, 17, 9, 13), (2, 9, 4, 33),
                                        (3, 6, 5, 130)])
def test_odd_sizes(rng, T, B, D, H, direction):
    spec = random_spec(rng, D, H, 2, direction)
    x = rng.standard_normal((T, B, D))
    y, h_n = fastgru.GRU(spec, dtype="float64")(x)
    y_ref, h_ref = reference_gru(x, spec_layers(spec), direction=direction)
    assert_close(y, y_ref, "float64", "y")
    assert_close(h_n, h_ref, "float64", "h_n")


@pytest.mark.parametrize("lbr", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clip(rng, lbr, dtype):
    spec = random_spec(rng, 4, 6, 1, "bidirectional", lbr, clip=0.7, scale=2.0)
    x = 3 * rng.standard_normal((5, 3, 4))
    y, h_n = fastgru.GRU(spec, dtype=dtype)(x)
    y_ref, h_ref = reference_gru(x, spec_layers(spec), direction="bidirectional",
                                 linear_before_reset=lbr, clip=0.7)
    y_unclipped, _ = reference_gru(x, spec_layers(spec), direction="bidirectional",
                                   linear_before_reset=lbr)
    assert np.abs(y_ref - y_unclipped).max() > 1e-2, "the test data never reaches the clip"
    assert_close(y, y_ref, dtype, "y")
    assert_close(h_n, h_ref, dtype, "h_n")


def test_batch_first_and_unbatched(rng):
    spec = random_spec(rng, 3, 4, 2, "bidirectional")
    x = rng.standard_normal((5, 2, 3))
    h0 = rng.standard_normal((4, 2, 4))
    y_ref, h_ref = reference_gru(x, spec_layers(spec), direction="bidirectional", h0=h0)

    y, h_n = fastgru.GRU(spec, batch_first=True, dtype="float64")(x.transpose(1, 0, 2), h0)
    assert y.shape == (2, 5, 8) and y.flags.c_contiguous
    assert_close(y, y_ref.transpose(1, 0, 2), "float64", "batch_first y")
    assert_close(h_n, h_ref, "float64", "batch_first h_n")

    y1, h1 = fastgru.GRU(spec, dtype="float64")(x[:, 1], h0[:, 1])
    assert y1.shape == (5, 8) and h1.shape == (4, 4)
    assert_close(y1, y_ref[:, 1], "float64", "unbatched y")
    assert_close(h1, h_ref[:, 1], "float64", "unbatched h_n")


def test_lengths_pad_with_zeros_and_keep_h0_for_empty_rows(rng):
    spec = random_spec(rng, 2, 3, 1, "bidirectional")
    x = rng.standard_normal((4, 3, 2))
    h0 = rng.standard_normal((2, 3, 3))
    y, h_n = fastgru.GRU(spec, dtype="float64")(x, h0, lengths=[4, 2, 0])
    assert np.all(y[2:, 1] == 0) and np.all(y[:, 2] == 0)
    assert np.array_equal(h_n[:, 2], h0[:, 2])
    # the reverse direction of a short row starts at its own last step, not at T - 1
    _, h_short = fastgru.GRU(spec, dtype="float64")(x[:2, 1:2], h0[:, 1:2])
    assert_close(h_n[:, 1:2], h_short, "float64", "short row")


def test_empty_sequence_returns_initial_state(rng):
    spec = random_spec(rng, 2, 3, 2)
    h0 = rng.standard_normal((2, 4, 3))
    y, h_n = fastgru.GRU(spec)(np.zeros((0, 4, 2)), h0)
    assert y.shape == (0, 4, 3)
    assert_close(h_n, h0, "float32", "h_n")


def compiled_for(cpu: str, features: str, code: str, cache_dir, **env) -> str:
    """The standard output of `code` run in a child Numba compiles for `cpu` with `features`
    (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES), with its own kernel cache in cache_dir and `env`
    added; the test fails if the child does."""
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features,
           "NUMBA_CACHE_DIR": str(cache_dir), **env}
    done = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(__file__), env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif(not llvm_binding.get_host_cpu_features().get("avx512f"),
                    reason="compiles for an AVX-512 Intel server with this machine's features")
def test_gate_loops_at_full_width_on_intel_servers(tmp_path):
    """Compiled for Sapphire Rapids, whose LLVM tuning prefers 256-bit loops, the gate loops are
    vectorized at 512 bits all the same (simd.full_width_loops): every vector division in the
    layer kernel is a zmm one, none ymm. The kernel is only compiled, never run."""
    code = """if True:
        import re, numba, numpy as np, fastgru
        from fastgru.kernels import gru
        from fastgru.testing.models import random_spec
        model = fastgru.GRU(random_spec(np.random.default_rng(0), 5, 64))
        T, B, H, Hp = 2, 3, 64, model._packed.padded_units
        f32 = lambda *shape: np.zeros(shape, np.float32)
        packed = model._packed
        args = (f32(T, B, 3 * Hp), *packed.layer_arrays[0], f32(1, B, H), f32(1, B, 3 * Hp),
                f32(1, B, H), np.full(B, T, np.int64), packed.reverse, True, packed.clip,
                f32(T, B, H), 1, 4)
        signature = tuple(numba.typeof(a) for a in args)
        gru.gru_layer_serial.compile(signature)
        asm = gru.gru_layer_serial.inspect_asm(signature)
        print(" ".join(sorted(set(re.findall(r"vdivps\\s+%([xyz]mm)", asm)))))
    """
    from numba.core.codegen import get_host_cpu_features
    widths = compiled_for("sapphirerapids", get_host_cpu_features(), code, tmp_path).split()
    assert "zmm" in widths and "ymm" not in widths, widths


# What Numba is told an AVX2 machine (Haswell) has: 16 vector registers of 32 bytes, no AVX-512.
HASWELL_FEATURES = ",".join(
    ["+" + f for f in ("64bit avx avx2 bmi bmi2 cmov cx16 f16c fma fxsr lzcnt mmx movbe pclmul "
                       "popcnt sahf sse sse2 sse3 sse4.1 sse4.2 ssse3 x87 xsave").split()]
    + ["-avx512f", "-avx512vl"])


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="compiles x86 code")
def test_avx2_product_loops_keep_their_sums_in_registers(tmp_path):
    """Compiled for Haswell (16 vector registers), no inner loop of the products stores a vector
    to the stack, for float32 weights or widened bfloat16 ones: a spilled sum is stored and
    reloaded at every k, on its chain of multiply-adds. (The widened 6-row tile reloads one
    loop-invariant vector, a load like a memory operand's, which is allowed.) The code checked is
    matvec's own copy of the tiles, the copy a caller loaded from Numba's cache runs: when a sum
    spilled there, the widened path ran no faster than float32 (simd._upper_halves). Only
    compiled, never run."""
    code = """if True:
        import re, numba, numpy as np
        from fastgru.kernels import layout, products
        P = layout.panel_width(np.float32)
        for weights in (np.float32, np.uint16):
            args = (np.zeros((5, 64), np.float32), np.zeros((6, 64, P), weights),
                    np.zeros((5, 6 * P), np.float32), 0, 5, 0, 6, False)
            signature = tuple(numba.typeof(a) for a in args)
            products.matvec.compile(signature)
            asm = products.matvec.inspect_asm(signature)
            # single-block loops: from a label to a jump back to it, no label between
            for body in re.findall(r"^(\\.LBB\\w+):\\n((?:(?!\\.LBB).*\\n)*?)\\s+j\\w+\\s+\\1\\n",
                                   asm, re.M):
                if "vfmadd" in body[1]:
                    stores = re.findall(r"\\s%ymm\\d+, -?\\w*\\(%rsp\\)", body[1])
                    print(np.dtype(weights).name, len(stores))
    """
    stdout = compiled_for("haswell", HASWELL_FEATURES, code, tmp_path)
    loops = [line.split() for line in stdout.splitlines()]
    assert {"float32", "uint16"} <= {weights for weights, _ in loops}, loops
    assert all(stores == "0" for _, stores in loops), loops


@pytest.mark.slow
@pytest.mark.skipif(not all(llvm_binding.get_host_cpu_features().get(f) for f in ("avx2", "fma")),
                    reason="runs code compiled for an AVX2 CPU, so needs one")
def test_avx2_build_matches_reference(tmp_path):
    """Compiled for an AVX2 CPU (32-byte vectors, 6-row half-panel register tiles; this machine
    may have AVX-512) in a fresh process with its own kernel cache, fastgru still matches the
    reference: rows shared out, hidden units shared out (batch 1), both dtypes. Each row of a
    13-row batch (a 6-row tile, then 2-row and 1-row ones) equals, bit for bit, the same row run
    alone. bfloat16 takes the widened path there (its mask in assembly:
    cpu.MASK_IN_ASSEMBLY), whose results equal a float32 model of the rounded weights bit for
    bit."""
    code = """if True:
        import numpy as np, fastgru
        from fastgru.kernels import cpu
        from fastgru.testing.asserts import assert_close
        from fastgru.testing.models import random_spec, spec_layers
        from fastgru.testing.reference import reference_gru
        assert cpu.VECTOR_BYTES == 32 and not cpu.FOUR_ROW_TILES and cpu.MASK_IN_ASSEMBLY
        assert cpu.BF16_PATHS == ("widen",)
        rng = np.random.default_rng(3)
        for dtype in ("float32", "float64"):
            for B, H, direction, lbr in ((1, 300, "forward", False), (7, 70, "bidirectional", True),
                                         (3, 33, "reverse", False), (13, 40, "forward", True)):
                # weights at PyTorch's initial scale: at 0.5, H=300 saturates the gates and
                # amplifies float32 rounding (to 5e-5 here) beyond the test's tolerance
                spec = random_spec(rng, 6, H, 2, direction, lbr, scale=H ** -0.5)
                x = rng.standard_normal((5, B, 6))
                model = fastgru.GRU(spec, dtype=dtype)
                y, h_n = model(x)
                y_ref, h_ref = reference_gru(x, spec_layers(spec), direction=direction,
                                             linear_before_reset=lbr)
                assert_close(y, y_ref, dtype, f"{dtype} B={B} H={H} y")
                assert_close(h_n, h_ref, dtype, f"{dtype} B={B} H={H} h_n")
                if B == 13:
                    for b in range(B):
                        alone, _ = model(x[:, b:b + 1])
                        assert np.array_equal(alone[:, 0], y[:, b]), f"{dtype} row {b} alone"
                if dtype == "float32":
                    widened = fastgru.GRU(spec, dtype="bfloat16")
                    for ours, rounded in zip(widened(x), fastgru.GRU(widened.spec)(x)):
                        assert np.array_equal(ours, rounded), f"bfloat16 B={B} H={H}"
        print("checked")
    """
    stdout = compiled_for("haswell", HASWELL_FEATURES, code, tmp_path, NUMBA_NUM_THREADS="2")
    assert stdout.strip() == "checked"
