"""Running packed weights: which kernel, how the work is shared among threads, which scratch
buffers. The facade (GRU) and the streams check their inputs and call in here."""

from __future__ import annotations

import threading

import numba
import numpy as np

from fastgru._fork import after_fork_in_child
from fastgru._packed import PackedWeights
from fastgru._weights import bfloat16_values
from fastgru._workspace import Workspace, WorkspacePool
from fastgru.kernels import gru as kernels
from fastgru.kernels import products
from fastgru.kernels.bfloat16 import PAIR_MULTIPLE, round_to_pairs
from fastgru.kernels.int8_pack import Int8Weights, Quantized, quantize_rows
from fastgru.kernels.runtime import parallel_guard

# A one-step call (T=1, one direction: a graph's streaming step) of fewer multiply-adds than
# this, all layers together, or on one thread, runs as a stream step on the calling thread: one
# kernel call for every layer, no thread plan. Below it, waking the threads and meeting them
# costs more than sharing the step saves (bench/RESULTS.md, "Thresholds in the code").
STEP_PARALLEL_MIN_MACS = 6 << 20

# Below this many multiply-adds the input projection runs on the calling thread: sharing it out
# costs more than it saves (bench/RESULTS.md, "Thresholds in the code").
PROJECT_PARALLEL_MIN_MACS = 1 << 20


class _RunningCalls:
    """How many GRU calls are running in this process (entering returns the count, this one
    included). With several at once, each splitting its work over every thread would leave
    threads waiting on partners busy with another call, so concurrent calls divide the threads
    among themselves (bench/RESULTS.md, "Thresholds in the code")."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._count -= 1

    def after_fork_in_child(self) -> None:
        """The calls counted in the parent do not run in a forked child."""
        self._count = 0
        self._lock = threading.Lock()


_RUNNING = _RunningCalls()
after_fork_in_child(_RUNNING.after_fork_in_child)


def operand(x: np.ndarray, w, ws: Workspace):
    """What the kernels multiply w by (products.operand, made in ws): x (N, D) itself; x
    rounded to (N, pairs) pairs of bfloat16 for weights paired for dot products or tiles
    (kernels/bfloat16.py); x quantized per row for "vnni" int8 weights (kernels/int8_pack.py)."""
    N = x.shape[0]
    if isinstance(w, Int8Weights):
        if w.words.dtype != np.int32:  # the widened path multiplies the floats
            return x
        q = Quantized(ws.get("int8 bytes", (N, w.words.shape[1]), np.uint32),
                      ws.get("int8 zeros", (N,), np.int32), ws.get("int8 scales", (N,), np.float32))
        quantize_rows(x, q, 0, N)
        return q
    if w.dtype not in PAIR_MULTIPLE:
        return x
    pairs = ws.get("pairs", (N, w.shape[1]), np.uint32)
    round_to_pairs(x, pairs, 0, N)
    return pairs


def panels(w) -> int:
    """How many weight panels w (one layer's input weights) has."""
    return (w.words if isinstance(w, Int8Weights) else w).shape[0]


def project(x: np.ndarray, w, out: np.ndarray, threads: int, ws: Workspace) -> None:
    """out = x @ W^T (see products.project): x (N, D), w (panels, D, P) or Int8Weights, out
    (N, panels*P)."""
    v = operand(x, w, ws)
    if threads > 1 and out.size * x.shape[1] >= PROJECT_PARALLEL_MIN_MACS:
        products.project(v, w, out)
    else:
        products.matvec(v, w, out, 0, x.shape[0], 0, panels(w), False)


def front_input(packed: PackedWeights, x: np.ndarray) -> np.ndarray:
    """What the kernels take as the first layer's input: x (N, D) itself, or for a model with
    a front (see _packed.FRONT_MIN_PADDING_BYTES) x @ W^T (N, dirs*3H), the input products of
    every gate and direction, x rounded to bfloat16 first where the kernels round operands."""
    if packed.front is None:
        return x
    if not isinstance(packed.w0, Int8Weights) and packed.w0.dtype in PAIR_MULTIPLE:
        pairs = np.empty((x.shape[0], (x.shape[1] + 1) // 2), np.uint32)
        round_to_pairs(np.ascontiguousarray(x), pairs, 0, x.shape[0])
        x = bfloat16_values(pairs.view(np.uint16)[:, :x.shape[1]])
    out = np.empty((x.shape[0], packed.front.shape[0]), packed.dtype)
    products.dot_rows(np.ascontiguousarray(x), packed.front, out)
    return out


def stream_kernel_args(packed: PackedWeights, n: int, ws: Workspace) -> tuple:
    """What gru_stream_step takes between x (n, D) and h (L, n, H) and out (n, H), its scratch
    arrays taken from ws. Made once per batch size and kept by ws: a one-step call is short
    enough that making them at every call showed in its time (bench/RESULTS.md, "Thresholds in
    the code")."""

    def make():
        L, H, Hp = packed.num_layers, packed.hidden_size, packed.padded_units
        ones = ws.get("ones", (n,), np.int64)
        ones[:] = 1  # every row takes its one step
        return (packed.w0, packed.wrest, packed.bx, packed.r, packed.rbn,
                ws.get("xproj", (1, n, 3 * Hp)), ws.get("acc", (n, 3 * Hp)),
                ws.get("hr", (n, H)), ones, packed.linear_before_reset, packed.clip,
                ws.get("ys", (L, 1, n, H)), packed.row_group)

    return ws.derived(("stream", n), make)


def plan(packed: PackedWeights, B: int, threads: int):
    """(kernel, split) for a batch of B rows: how the work is shared among `threads`.

    Rows go to threads in blocks of whole quads (see kernels.gru_layer), each thread
    running the whole time loop for its rows. When there are fewer quads than threads, the
    hidden units are shared out instead, in slices of whole weight panels, the threads
    meeting at every step: that wins from the smallest weights that make two panels
    (bench/RESULTS.md, "Thresholds in the code").
    """
    dirs = packed.num_directions
    blocks = max(1, min(-(-B // 4), -(-threads // dirs)))
    chunks = min(-(-threads // dirs), packed.unit_panels)
    if blocks * dirs < threads and chunks > 1:
        return kernels.gru_layer_columns, chunks
    if threads > 1 and blocks * dirs > 1:
        return kernels.gru_layer, blocks
    return kernels.gru_layer_serial, 1


def _call_scratch(packed: PackedWeights, ws: Workspace, T: int, B: int) -> tuple:
    """(xproj (T, B, dirs*3Hp), the same as (T*B, dirs*3Hp), acc (dirs, B, 3Hp), hr and
    h_spare (dirs, B, H), the outputs of the layers below the top [(T, B, dirs*H)] * 2 or
    none, lengths (B,) all T) for a call of T steps of B rows: made once per (T, B) and
    kept by ws, as making them at every call showed in a short call's time (bench/RESULTS.md,
    "Thresholds in the code")."""

    def make():
        dirs, H, Hp = packed.num_directions, packed.hidden_size, packed.padded_units
        xproj = ws.get("xproj", (T, B, dirs * 3 * Hp))
        between = [ws.get(f"layer{k}", (T, B, dirs * H))
                   for k in range(min(2, packed.num_layers - 1))]
        return (xproj, xproj.reshape(T * B, dirs * 3 * Hp), ws.get("acc", (dirs, B, 3 * Hp)),
                ws.get("hr", (dirs, B, H)), ws.get("h_spare", (dirs, B, H)), between,
                np.full(B, T, dtype=np.int64))

    return ws.derived(("call", T, B), make)


def run_sequence(packed: PackedWeights, pool: WorkspacePool, x: np.ndarray, h_n: np.ndarray,
                 steps: np.ndarray | None) -> np.ndarray:
    """y (T, B, dirs*H) for x (T, B, D) in the model's dtype, C-contiguous; h_n
    (L*dirs, B, H) holds the initial state and receives the final one; steps (B,) the rows'
    lengths, or None for all T. Scratch comes from `pool`, one workspace per concurrent call."""
    T, B, D = x.shape
    L, dirs, H = packed.num_layers, packed.num_directions, packed.hidden_size
    lbr = packed.linear_before_reset
    if packed.front is not None:
        x = front_input(packed, x.reshape(T * B, D)).reshape(T, B, -1)
    y = np.empty((T, B, dirs * H), dtype=packed.dtype)
    ws = pool.take()
    try:
        if T == 1 and dirs == 1 and (steps is None or steps.min(initial=1) == 1) and \
                (B * packed.step_macs < STEP_PARALLEL_MIN_MACS or numba.get_num_threads() == 1):
            kernels.gru_stream_step(x[0], h_n, *stream_kernel_args(packed, B, ws), 0, y[0])
            return y
        xproj, xproj_rows, acc, hr, h_spare, between, full = _call_scratch(packed, ws, T, B)
        steps = full if steps is None else steps
        state = h_n.reshape(L, dirs, B, H)
        with _RUNNING as calls, parallel_guard():
            # concurrent calls share Numba's threads rather than each claiming all of them
            threads = max(1, numba.get_num_threads() // calls)
            kernel, split = plan(packed, B, threads)
            layer_in = x
            for k in range(L):
                w = packed.input_weights(k)
                project(layer_in.reshape(T * B, layer_in.shape[2]), w, xproj_rows, threads, ws)
                layer_out = y if k == L - 1 else between[k % 2]
                args = (xproj, *packed.layer_arrays[k], state[k])
                tail = (steps, packed.reverse, lbr, packed.clip, layer_out, split)
                if kernel is kernels.gru_layer_columns:
                    progress = ws.get("progress", (kernels.progress_size(T, dirs * split, lbr),),
                                      np.int64)
                    progress[:] = 0
                    kernel(*args, h_spare, acc, hr, *tail, progress)
                else:
                    kernel(*args, acc, hr, *tail, packed.row_group)
                layer_in = layer_out
    finally:
        pool.give(ws)
    return y


def compile_kernels(packed: PackedWeights) -> None:
    """Compile (or load from Numba's on-disk cache) every sequence kernel `packed` can use."""
    dirs, H, dt, Hp = packed.num_directions, packed.hidden_size, packed.dtype, packed.padded_units
    lbr = packed.linear_before_reset
    xproj = np.zeros((1, 1, dirs * 3 * Hp), dt)
    h = np.zeros((dirs, 1, H), dt)
    scratch = (np.zeros((dirs, 1, 3 * Hp), dt), np.zeros((dirs, 1, H), dt))
    one = np.ones(1, np.int64)
    tail = (one, packed.reverse, lbr, packed.clip, np.zeros((1, 1, dirs * H), dt), 1)
    with parallel_guard():
        x0 = operand(front_input(packed, np.zeros((1, packed.input_size), dt)), packed.w0,
                     Workspace(dt))
        out = xproj.reshape(1, -1)
        products.project(x0, packed.w0, out)  # both ways `project` may go
        products.matvec(x0, packed.w0, out, 0, 1, 0, panels(packed.w0), False)
        layer = (xproj, *packed.layer_arrays[0], h)
        kernels.gru_layer_serial(*layer, *scratch, *tail, packed.row_group)
        kernels.gru_layer(*layer, *scratch, *tail, packed.row_group)
        progress = np.zeros(kernels.progress_size(1, dirs, lbr), np.int64)
        kernels.gru_layer_columns(*layer, h.copy(), *scratch, *tail, progress)
