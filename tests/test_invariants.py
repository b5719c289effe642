"""Properties that hold whatever the weights: prefixes, row independence, threads, NaN, dtypes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest

import fastgru
from fastgru.kernels import gru as kernels
from fastgru.kernels import layout, products
from fastgru.testing.asserts import assert_close
from fastgru.testing.models import random_spec, spec_layers


# Stacked bidirectional layers read the future through the layer below, so only the forward half
# of a single bidirectional layer has the prefix property.
@pytest.mark.parametrize("direction, num_layers", [("forward", 2), ("bidirectional", 1)])
def test_prefix_gives_prefix_of_outputs(rng, direction, num_layers):
    model = fastgru.GRU(random_spec(rng, 4, 5, num_layers, direction))
    x = rng.standard_normal((10, 3, 4))
    y, _ = model(x)
    y_prefix, _ = model(x[:6])
    H = 5
    assert_close(y_prefix[..., :H], y[:6, :, :H], "float32", "forward half")
    if direction == "forward":
        # and bit for bit the full call with lengths cut at 6: every product is one chain of
        # fused multiply-adds, whichever register tile or batch position computes it
        y_len, _ = model(x, lengths=[6, 6, 6])
        assert np.array_equal(y_len[:6], y_prefix)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_do_not_depend_on_each_other(rng, dtype):
    # A row alone takes the one-row register tile, inside a batch the four-row tile; both sum
    # each product in one chain over k in order, so the results agree bit for bit.
    model = fastgru.GRU(random_spec(rng, 4, 70, 2, "bidirectional"), dtype=dtype)
    x = rng.standard_normal((7, 13, 4))
    lengths = rng.integers(0, 8, 13)
    y, h_n = model(x, lengths=lengths)
    for b in (0, 5, 12):
        y_b, h_b = model(x[:, b:b + 1], lengths=lengths[b:b + 1])
        assert np.array_equal(y_b[:, 0], y[:, b]), f"row {b} y"
        assert np.array_equal(h_b[:, 0], h_n[:, b]), f"row {b} h_n"
    # and changing the other rows changes nothing in this one
    x_other = x.copy()
    x_other[:, 1:] = rng.standard_normal((7, 12, 4))
    y_other, h_other = model(x_other, lengths=lengths)
    assert np.array_equal(y_other[:, 0], y[:, 0]) and np.array_equal(h_other[:, 0], h_n[:, 0])


def test_nan_stays_in_its_row(rng):
    model = fastgru.GRU(random_spec(rng, 3, 4, 2, "bidirectional"))
    x = rng.standard_normal((5, 4, 3))
    clean_y, clean_h = model(x)
    x[2, 1, 0] = np.nan
    x[3, 2, 1] = np.inf
    y, h_n = model(x)
    assert np.isnan(y[:, 1]).any() and np.isnan(h_n[:, 1]).any()
    for b in (0, 3):
        assert np.array_equal(y[:, b], clean_y[:, b])
        assert np.array_equal(h_n[:, b], clean_h[:, b])


def test_results_do_not_depend_on_thread_count(rng):
    model = fastgru.GRU(random_spec(rng, 6, 48, 2, "bidirectional"))
    x = rng.standard_normal((20, 11, 6))
    before = numba.get_num_threads()
    try:
        outputs = []
        for n in sorted({1, before}):
            numba.set_num_threads(n)
            outputs.append(model(x))
    finally:
        numba.set_num_threads(before)
    for y, h_n in outputs[1:]:
        assert np.array_equal(y, outputs[0][0]) and np.array_equal(h_n, outputs[0][1])


def test_results_do_not_depend_on_thread_count_beyond_this_machine():
    """1, 2 and 4 Numba threads in fresh processes (a 2-core machine runs 4 threads too).

    The batch of 23 is shared out by rows; the batch of 3 with H=300 (five weight panels) by
    hidden units (the threads meeting once per step, twice with linear_before_reset=0), every
    slice reading all the state.
    """
    code = """if True:
        import sys
        import numpy as np, fastgru
        from fastgru.testing.models import random_spec
        rng = np.random.default_rng(1)
        m = fastgru.GRU(random_spec(rng, 6, 48, 1, "bidirectional"))
        out = b"".join(a.tobytes() for a in m(rng.standard_normal((12, 23, 6))))
        for lbr in (True, False):
            m = fastgru.GRU(random_spec(rng, 6, 300, 2, "forward", lbr))
            x = rng.standard_normal((9, 3, 6))
            out += b"".join(a.tobytes() for a in m(x, lengths=[9, 0, 4]))
            out += b"".join(a.tobytes() for a in m(x[:8]))
        sys.stdout.buffer.write(out)
    """
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                           env={**os.environ, "NUMBA_NUM_THREADS": n}).stdout
            for n in ("1", "2", "4")]
    assert len(outs[0]) > 0 and outs[0] == outs[1] == outs[2]


# The second model's batches of 1-3 rows share out hidden units (five weight panels), the
# threads of one call meeting at every step while other calls compete for the same threads.
@pytest.mark.parametrize("hidden_size, direction, max_batch", [(24, "bidirectional", 8),
                                                               (300, "forward", 3)])
def test_many_threads_get_the_serial_results(rng, hidden_size, direction, max_batch):
    model = fastgru.GRU(random_spec(rng, 8, hidden_size, 2, direction, False))
    inputs = [rng.standard_normal((int(rng.integers(1, 30)), int(rng.integers(1, max_batch + 1)),
                                   8)) for _ in range(32)]
    expected = [model(x) for x in inputs]
    results = [None] * len(inputs)
    barrier = threading.Barrier(8)

    def work(worker):
        barrier.wait()
        for _ in range(5):
            for i in range(worker, len(inputs), 8):
                results[i] = model(inputs[i])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (y, h_n), (y_e, h_e) in zip(results, expected, strict=True):
        assert np.array_equal(y, y_e) and np.array_equal(h_n, h_e)


@pytest.mark.parametrize("lbr", [True, False])
def test_one_thread_does_every_unit_slice_when_alone(rng, lbr):
    """gru_layer_columns with more slices than threads: a task that finds no thread takes no
    slice, the running task claims them all, and nothing waits forever."""
    model = fastgru.GRU(random_spec(rng, 5, 200, 1, "bidirectional", lbr), dtype="float64")
    T, B, dirs, H, Hp = 7, 2, 2, 200, model._packed.padded_units
    xproj = rng.standard_normal((T, B, dirs * 3 * Hp))
    h0 = rng.standard_normal((dirs, B, H))
    lengths = np.array([7, 4])

    def run(kernel, spare, tail):
        h, y = h0.copy(), np.zeros((T, B, dirs * H))
        scratch = (np.zeros((dirs, B, 3 * Hp)), np.zeros((dirs, B, H)))
        packed = model._packed
        kernel(xproj, packed.bx[0], packed.r[0], packed.rbn[0], h, *spare, *scratch,
               lengths, packed.reverse, lbr, packed.clip, y, *tail)
        return y, h

    y_serial, h_serial = run(kernels.gru_layer_serial, (), (1, 4))
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        chunks = Hp // layout.panel_width(np.float64)
        progress = np.zeros(kernels.progress_size(T, dirs * chunks, lbr), np.int64)
        y, h = run(kernels.gru_layer_columns, (np.zeros((dirs, B, H)),), (chunks, progress))
    finally:
        numba.set_num_threads(before)
    assert chunks > 1 and np.array_equal(y, y_serial) and np.array_equal(h, h_serial)


def test_results_are_not_overwritten_by_later_calls(rng):
    model = fastgru.GRU(random_spec(rng, 3, 4, 2))
    x = rng.standard_normal((5, 2, 3))
    y, h_n = model(x)
    y_copy, h_copy = y.copy(), h_n.copy()
    model(rng.standard_normal((5, 2, 3)))
    assert np.array_equal(y, y_copy) and np.array_equal(h_n, h_copy)


def test_one_step_calls_of_any_batch_between_longer_calls(rng):
    # One-step calls reuse the argument tuples their workspace keeps per batch size, here
    # around longer and wider calls that replace the workspace's buffers.
    from fastgru.testing.reference import reference_gru

    spec = random_spec(rng, 6, 9, 2)
    model = fastgru.GRU(spec)
    for batch, steps in [(1, 1), (3, 1), (1, 1), (16, 40), (3, 1), (1, 1), (40, 1), (2, 1)]:
        x = rng.standard_normal((steps, batch, 6))
        h0 = rng.standard_normal((2, batch, 9))
        y, h_n = model(x, h0)
        y_ref, h_ref = reference_gru(x, spec_layers(spec), h0=h0)
        assert_close(y, y_ref, "float32", f"y, B={batch}, T={steps}")
        assert_close(h_n, h_ref, "float32", f"h_n, B={batch}, T={steps}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 2, 7])
def test_products_in_either_panel_order_agree_bit_for_bit(rng, dtype, rows):
    # Steps alternate the order in which they read the weight panels (gates); a row's sums must
    # not depend on it. Odd and even panel counts: a lone row takes panels two at a time.
    H, K = 200, 50
    w = rng.standard_normal((3 * H, K)).astype(dtype)
    v = rng.standard_normal((rows, K)).astype(dtype)
    panels = layout.pack_gate_rows(w, H)
    n, P = panels.shape[0], panels.shape[2]
    expected = layout.pad_gate_columns((v.astype(np.float64) @ w.T.astype(np.float64)).astype(
        dtype), H)  # padded like the kernel's columns of this dtype
    for p0, p1 in ((0, n), (1, n), (1, n - 1)):
        outs = []
        for backwards in (False, True):
            out = np.full((rows, n * P), np.nan, dtype)
            products.matvec(v, panels, out, 0, rows, p0, p1, backwards)
            outs.append(out)
        assert np.array_equal(outs[0], outs[1], equal_nan=True), (p0, p1)
        written = ~np.isnan(outs[1])
        assert written[:, p0 * P:p1 * P].all() and written.sum() == rows * (p1 - p0) * P
        assert_close(outs[1][:, p0 * P:p1 * P], expected[:, p0 * P:p1 * P], dtype.__name__,
                     f"panels {p0}..{p1}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kernel_arrays_start_on_a_cache_line(rng, dtype):
    from fastgru._workspace import Workspace
    from fastgru.kernels.cpu import CACHE_LINE_BYTES

    model = fastgru.GRU(random_spec(rng, 5, 20, 2, "bidirectional"), dtype=dtype)
    packed = model._packed
    arrays = [packed.w0, packed.wrest, packed.r, packed.bx, packed.rbn]
    workspace = Workspace(np.float32)
    arrays += [workspace.get("a", (3, 7)), workspace.get("b", (1,), np.uint32),
               workspace.get("a", (50, 9))]  # the last one replaces the first's buffer
    assert all(a.ctypes.data % CACHE_LINE_BYTES == 0 for a in arrays)
    assert not model._packed.r.flags.writeable and workspace.get("a", (2, 2)).flags.writeable


@pytest.mark.parametrize("text, expected", [("64\n", 64), ("128", 128), ("0", 32), ("48", 32),
                                            ("", 32), (None, 32)])
def test_cache_line_size_falls_back_on_nonsense(tmp_path, text, expected):
    from fastgru.kernels import cpu

    if text is not None:  # None: no such file
        (tmp_path / "index0").mkdir()
        (tmp_path / "index0" / "coherency_line_size").write_text(text)
    assert cpu._cache_line_bytes(32, str(tmp_path)) == expected


@pytest.mark.parametrize("l2_size, expected", [("2048K", 2 << 20), ("1M", 1 << 20), ("0K", 7),
                                               ("", 7)])
def test_cache_size_falls_back_on_nonsense(tmp_path, l2_size, expected):
    from fastgru.kernels import cpu

    for index, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "32K"),
                                                  ("2", "Unified", l2_size)]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(text + "\n")
    assert cpu._cache_bytes(1, 7, str(tmp_path)) == 48 << 10
    assert cpu._cache_bytes(2, 7, str(tmp_path)) == expected
    assert cpu._cache_bytes(3, 7, str(tmp_path)) == 7  # no such level


def test_workspace_counts_the_bytes_it_holds():
    from fastgru._workspace import Workspace

    workspace = Workspace(np.float32)
    workspace.get("a", (3, 7))
    workspace.get("b", (2,), np.int64)
    workspace.get("a", (2, 2))  # fits: kept
    assert workspace.nbytes == 3 * 7 * 4 + 2 * 8
    workspace.get("a", (50, 9))  # replaces a's buffer
    workspace.get("b", (2,), np.uint32)  # another dtype: replaced
    assert workspace.nbytes == 50 * 9 * 4 + 2 * 4


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_no_recompilation_for_other_input_dtypes_or_layouts(rng, dtype):

    model = fastgru.GRU(random_spec(rng, 4, 5, 2, "bidirectional"), dtype=dtype)
    base = rng.standard_normal((6, 3, 4))
    model(base)
    count = len(kernels.gru_layer.signatures)
    variants = [base.astype(np.float32), base.astype(np.float64), base.astype(">f8"),
                np.asfortranarray(base), base[::-1], base[:, ::2], base.astype(np.int16),
                base.tolist()]
    reference = None
    for x in variants:
        y, _ = model(x)
        assert y.dtype == dtype
    assert len(kernels.gru_layer.signatures) == count
    # and the values agree with the plain float copy of the input
    for x in variants[:3]:
        reference = model(np.array(x, dtype=np.float64))[0]
        assert np.array_equal(model(x)[0], reference)


def test_model_is_immutable(rng):
    model = fastgru.GRU(random_spec(rng, 3, 4))
    with pytest.raises(AttributeError):
        model.hidden_size = 8
    with pytest.raises(ValueError, match="read-only"):
        model._packed.r[...] = 0


def test_forked_children_can_run_a_warm_model():
    """A model warmed up in the parent works in fork()ed children (pre-forking servers).

    With GNU OpenMP as Numba's layer a child aborts; fastgru makes Numba's TBB layer loadable.
    """
    code = """if True:
        import os, sys
        import numpy as np, fastgru
        from fastgru.testing.models import random_spec
        rng = np.random.default_rng(0)
        model = fastgru.GRU(random_spec(rng, 4, 16, 2, "bidirectional"))
        x = rng.standard_normal((6, 9, 4))
        y, _ = model(x)
        codes = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                os._exit(0 if np.array_equal(model(x)[0], y) else 3)
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        import numba
        print(numba.threading_layer(), codes)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "NUMBA_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(" ", 1)[1].strip() == "[0, 0]", (out.stdout, out.stderr)


@pytest.mark.parametrize("layer", ["workqueue", "omp", "tbb"])
def test_concurrent_calls_under_every_threading_layer(layer):
    """16 threads at once under each layer a user may force: no abort, the serial results.

    Numba's workqueue layer aborts the process on concurrent parallel launches; fastgru
    serializes its parallel kernels when that layer is in use.
    """
    code = """if True:
        import sys, threading
        import numpy as np, fastgru, numba
        from fastgru.testing.models import random_spec
        rng = np.random.default_rng(0)
        # rows shared out, and (H=300, 2 rows) hidden units shared out
        models = [fastgru.GRU(random_spec(rng, 4, 24, 2, "bidirectional")),
                  fastgru.GRU(random_spec(rng, 4, 300, 1, "forward", False))]
        xs = [rng.standard_normal((20, 9 if i % 2 == 0 else 2, 4)) for i in range(16)]
        expected = [models[i % 2](x)[0] for i, x in enumerate(xs)]
        ok = []
        def work(i):
            for _ in range(3):
                ok.append(np.array_equal(models[i % 2](xs[i])[0], expected[i]))
        threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print(numba.threading_layer(), len(ok), all(ok))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "NUMBA_THREADING_LAYER": layer,
                                           "NUMBA_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [layer, "48", "True"], out.stdout


def test_memory_levels_off_over_many_calls():
    """3000 calls of varying shapes, dtypes and layouts: resident memory stops growing after
    the first third, and no kernel signature is added (bench/memory.py runs 100k)."""
    memory = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                          "memory.py")
    out = subprocess.run([sys.executable, memory, "--calls", "3000"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|")[1:4] for line in out.stdout.splitlines()[2:]]
    rss = [float(r[1]) for r in rows]
    sigs = [int(r[2]) for r in rows]
    assert len(rows) == 10
    assert max(rss[3:]) - rss[3] < 8, rss  # MB
    assert len(set(sigs[1:])) == 1, sigs
