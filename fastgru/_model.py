"""The public surface: GRU, an immutable model with the torch.nn.GRU calling convention."""

from __future__ import annotations

import os
import threading
from dataclasses import replace

import numba
import numpy as np

from fastgru._boundary import (as_float_array, as_lengths, check_shape, memory_bytes,
                               resolve_dtype)
from fastgru._weights import GRUSpec, LayerWeights, bfloat16_bits, bfloat16_values
from fastgru._streams import stream_kernel_args
from fastgru._workspace import Workspace, WorkspacePool
from fastgru.kernels import gru as kernels
from fastgru.kernels.bfloat16 import PAIR_MULTIPLE
from fastgru.kernels.bfloat16 import PATHS as BF16_PATHS
from fastgru.kernels.bfloat16 import pack as pack_bfloat16
from fastgru.kernels.bfloat16 import round_to_pairs
from fastgru.kernels.config import parallel_guard
from fastgru.kernels.cpu import empty_aligned

# A one-step call (T=1, one direction: a graph's streaming step) of fewer multiply-adds than
# this, all layers together, or on one thread, runs as a stream step on the calling thread: one
# kernel call for every layer, no thread plan. Measured on 2 cores, 2 layers, D=64, 2 threads
# (call us, shared out against one step): H=256 B=1 (0.6M) 48 against 40; H=512 B=1 (2.5M)
# 117 / 103; H=256 B=8 (5.1M) 62 / 58; H=256 B=16 (10M) 90 / 105; H=1024 B=1 (9.6M) 516 / 718.
STEP_PARALLEL_MIN_MACS = 6 << 20

# Below this many multiply-adds the input projection runs on the calling thread: sharing it out
# costs more than it saves. Measured on 2 cores (20 rows, D=128): 491 k multiply-adds 9.1 us
# serial against 11.9 shared out, 983 k 17.9 against 15.8, 1966 k 35.7 against 26.9.
PROJECT_PARALLEL_MIN_MACS = 1 << 20


class _RunningCalls:
    """How many GRU calls are running in this process (entering returns the count, this one
    included). With several at once, each splitting its work over every thread would leave
    threads waiting on partners busy with another call: measured, 2-8 Python threads calling an
    S2 model on 2 cores made 1250-1610 calls/s with each call sharing out hidden units against
    1810-1890 with each call on one thread."""

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
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RUNNING.after_fork_in_child)

# Packing input weights into panels pads each gate to a multiple of the panel width (64 float32
# units with AVX-512): an H=1 model of 900,000 inputs (11 MB of weights) took 1.5 GB. Where
# the padding of the first layer's input weights would exceed twice those weights and this many
# bytes, its input product runs before the kernels instead (GRU._front_input, NumPy's product
# on the weights unpadded), and the kernels take that product as their input, through an identity
# of 3H inputs: the kernels' copy then stays within a small multiple of the weights. Far beyond
# S1-S6 (whose H is a multiple of 64), so their kernels and results are unchanged.
FRONT_MIN_PADDING_BYTES = 16 << 20

# The kernel path of bfloat16 models (kernels/bfloat16.py): the fastest this CPU runs. Read when
# a model is built, so that tests and tools can build models of every path the CPU has.
BF16_PATH = BF16_PATHS[-1]


def _operand(x: np.ndarray, w: np.ndarray, ws: Workspace) -> np.ndarray:
    """What the kernels multiply w by: x (N, D) itself, or x rounded to (N, pairs) pairs of
    bfloat16 (made in ws) for weights paired for dot products or tiles (kernels/bfloat16.py)."""
    if w.dtype not in PAIR_MULTIPLE:
        return x
    pairs = ws.get("pairs", (x.shape[0], w.shape[1]), np.uint32)
    round_to_pairs(x, pairs, 0, x.shape[0])
    return pairs


def _project(x: np.ndarray, w: np.ndarray, out: np.ndarray, threads: int, ws: Workspace) -> None:
    """out = x @ W^T (see kernels.project): x (N, D), w (panels, D, P), out (N, panels*P)."""
    x = _operand(x, w, ws)
    if threads > 1 and out.size * x.shape[1] >= PROJECT_PARALLEL_MIN_MACS:
        kernels.project(x, w, out)
    else:
        kernels.matvec(x, w, out, 0, x.shape[0], 0, w.shape[0], False)


def _rebuild(spec: GRUSpec, batch_first: bool, dtype: str) -> "GRU":
    """Unpickling: the model from its weights and options."""
    return GRU(spec, batch_first=batch_first, dtype=dtype)


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only copy of `array` for the kernels, starting on a cache line."""
    frozen = empty_aligned(array.shape, array.dtype)
    frozen[...] = array
    frozen.setflags(write=False)
    return frozen


class GRU:
    """A multi-layer GRU with the torch.nn.GRU calling convention, computed by Numba kernels.

    Build one with :meth:`from_torch` or :meth:`from_onnx`, or directly from a
    :class:`fastgru._weights.GRUSpec`. The object is immutable and may be called from many threads
    at once.
    """

    def __init__(self, spec: GRUSpec, *, batch_first: bool = False, dtype="float32",
                 initial_state=None) -> None:
        self._precision = resolve_dtype(dtype)
        bfloat16 = self._precision == "bfloat16"
        self._dtype = np.dtype(np.float32 if bfloat16 else self._precision)  # x, h, y, biases
        if initial_state is not None:  # overrides the spec's; validated by GRUSpec
            spec = replace(spec, initial_state=np.asarray(initial_state))

        def own(a, weight=False):  # in the model's dtype (bfloat16 weights as exact float32)
            a = np.array(a, self._dtype)
            return bfloat16_values(bfloat16_bits(a)) if weight and bfloat16 else a

        # The model holds its weights in its own dtype; spec shows exactly those values, so
        # saving and exporting reproduce this model bit for bit (and no wider copy is kept).
        spec = replace(spec, layers=tuple(
            LayerWeights(own(layer.w, True), own(layer.r, True), own(layer.b))
            for layer in spec.layers),
            initial_state=None if spec.initial_state is None else own(spec.initial_state))
        for array in (*(a for layer in spec.layers for a in (layer.w, layer.r, layer.b)),
                      *([] if spec.initial_state is None else [spec.initial_state])):
            array.setflags(write=False)  # what save() and to_onnx() write is what runs
        self._spec = spec
        self._initial_state = None if spec.initial_state is None else \
            _frozen(spec.initial_state.astype(self._dtype))
        self._batch_first = bool(batch_first)
        dirs, H = spec.num_directions, spec.hidden_size
        dt = self._dtype

        def weights(a):  # packed weights as the kernels read them (see kernels/bfloat16.py)
            if not bfloat16:
                return a
            return pack_bfloat16(bfloat16_bits(a), BF16_PATH)

        # Kernel-ready arrays, derived once, in the kernels' gate-column layout (each gate padded
        # to Hp units, weights packed into panels; see fastgru/kernels/gru.py). Input weights of
        # all directions are stacked so one product projects the whole sequence for a layer.
        self._padded_units = kernels.padded_units(H, dt)
        Hp, item = self._padded_units, 2 if bfloat16 else dt.itemsize
        w0 = spec.layers[0].w.reshape(dirs * 3 * H, -1)
        padding = dirs * 3 * (Hp - H) * w0.shape[1] * item
        self._front = None  # the first layer's input weights, when a product before the kernels
        if padding > max(2 * w0.size * item, FRONT_MIN_PADDING_BYTES):
            self._front = _frozen(w0)  # in dt: _frozen's copy converts
            w0 = np.eye(dirs * 3 * H)
        inputs = [w0.shape[1]] + [layer.w.shape[-1] for layer in spec.layers[1:]]  # kernels'
        # packed weights per batch row: the multiply-adds of one step, all layers
        self._step_macs = sum(3 * Hp * dirs * (d_in + H) for d_in in inputs) + \
            (0 if self._front is None else self._front.size)
        packed = sum(3 * Hp * dirs * (d_in + H) for d_in in inputs) * item
        if packed > memory_bytes() // 2:  # checked before the packed copies are made
            raise ValueError(
                f"this model's kernel weights would take {packed / 2**30:.1f} GiB (each gate "
                f"padded to {self._padded_units} units), more than half this machine's memory")
        self._row_group = kernels.row_group(H, dt)
        self._unit_panels = self._padded_units // kernels.panel_width(dt)  # per gate
        ws = [weights(kernels.pack_gate_rows(w.reshape(dirs * 3 * H, -1).astype(dt), H))
              for w in [w0, *(layer.w for layer in spec.layers[1:])]]
        self._w0 = _frozen(ws[0])
        self._wrest = _frozen(np.array(ws[1:]) if len(ws) > 1 else
                              np.zeros((0, *ws[0].shape), ws[0].dtype))
        self._r = _frozen(np.array([[weights(kernels.pack_gate_rows(r.astype(dt), H))
                                     for r in layer.r] for layer in spec.layers]))
        bx, rbn = [], []
        for layer in spec.layers:
            wb, rb = layer.b[:, :3 * H], layer.b[:, 3 * H:]
            folded = wb + rb
            if spec.linear_before_reset:  # R_n h + Rb_n is multiplied by r: keep Rb_n apart
                folded[:, 2 * H:] = wb[:, 2 * H:]
            bx.append(kernels.pad_gate_columns(folded.astype(dt), H))
            rbn.append(rb[:, 2 * H:])
        self._bx = _frozen(np.array(bx, dtype=dt))
        self._rbn = _frozen(np.array(rbn, dtype=dt))
        self._layer_arrays = [(self._bx[k], self._r[k], self._rbn[k]) for k in range(len(bx))]
        reverse = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}
        self._reverse = _frozen(np.array(reverse[spec.direction], dtype=np.bool_))
        # None compiles kernels without the clip's comparisons (14% of S3's gate loops on AMD)
        self._clip = None if spec.clip is None else dt.type(spec.clip)
        self._pool = WorkspacePool(dt)

    def __reduce__(self):
        """Pickles as weights and options (not workspaces or locks): for multiprocessing's
        spawn, distributed workers and copy.deepcopy. Unpickling rebuilds an equal model."""
        return (_rebuild, (self._spec, self._batch_first, self._precision))

    # ---- construction from other tools -------------------------------------------------------

    @classmethod
    def from_torch(cls, src, *, prefix=None, batch_first=None, dtype="float32") -> "GRU":
        """Load PyTorch weights.

        src is a torch.nn.GRU or nn.GRUCell module, a state dict (name -> tensor or ndarray), or a
        path to a .pt/.pth/.bin file (read with torch.load(weights_only=True)) or a .safetensors
        file (read without torch). prefix selects one GRU in a larger state dict
        ("encoder.rnn."); without it, the one GRU in the dict is found. batch_first defaults to
        the module's own, else False.
        """
        from fastgru.loaders.torch import spec_from_torch

        spec, module_batch_first = spec_from_torch(src, prefix=prefix)
        first = module_batch_first if batch_first is None else batch_first
        return cls(spec, batch_first=first, dtype=dtype)

    @classmethod
    def from_onnx(cls, src, *, node=None, batch_first=None, dtype="float32") -> "GRU":
        """Load the GRU stack of an ONNX model (ModelProto, bytes or path).

        The graph may hold one GRU node or the chain torch.onnx.export writes for a stacked
        nn.GRU; node= reads only the GRU node of that name. batch_first defaults to what the
        graph says (layout=1, or a Transpose in front of the first layer).
        """
        from fastgru.loaders.onnx_stack import spec_from_onnx

        spec, layout_batch_first = spec_from_onnx(src, node=node)
        first = layout_batch_first if batch_first is None else batch_first
        return cls(spec, batch_first=first, dtype=dtype)

    @classmethod
    def from_keras(cls, src, *, layer=None, dtype="float32") -> "GRU":
        """Load the GRU layers of a Keras model: a .keras or .h5 file (read with h5py, without
        TensorFlow or Keras) or a Keras model object.

        Several GRU layers stacked one after the other (return_sequences=True) become one
        multi-layer model; layer= reads the GRU (or Bidirectional(GRU)) layer of that name.
        The model is batch_first, as Keras models are. A go_backwards layer becomes direction
        "reverse", whose outputs are aligned with the input steps: Keras returns the same
        outputs in reverse time order.
        """
        from fastgru.loaders.keras import spec_from_keras

        spec, batch_first = spec_from_keras(src, layer=layer)
        return cls(spec, batch_first=batch_first, dtype=dtype)

    # ---- files ---------------------------------------------------------------------------------

    def save(self, path) -> None:
        """Write fastgru's own file (safetensors with metadata); fastgru.load reads it back."""
        from fastgru.loaders import native

        native.write(path, self._spec, batch_first=self._batch_first, dtype=self._precision)

    def to_onnx(self, path=None, *, state_inputs: bool = False):
        """An ONNX model computing this GRU: input X, outputs Y (torch layout) and Y_h.

        With state_inputs=True the graph also takes initial_h (num_layers*dirs, B, H) and
        sequence_lens (B,) int32; without, a stored initial_state is written into the graph
        (a constant expanded to the batch). onnxruntime runs float32 models; it returns zeros
        in Y_h for rows of length 0 where fastgru returns the initial state. Written to path
        when given.
        """
        from fastgru.loaders.onnx_export import spec_to_onnx

        proto = spec_to_onnx(self._spec, batch_first=self._batch_first, dtype=self._dtype,
                             state_inputs=state_inputs)
        if path is not None:
            import onnx

            onnx.save(proto, path)
        return proto

    # ---- attributes ----------------------------------------------------------------------------

    @property
    def spec(self) -> GRUSpec:
        return self._spec

    @property
    def input_size(self) -> int:
        return self._spec.input_size

    @property
    def hidden_size(self) -> int:
        return self._spec.hidden_size

    @property
    def num_layers(self) -> int:
        return len(self._spec.layers)

    @property
    def direction(self) -> str:
        return self._spec.direction

    @property
    def bidirectional(self) -> bool:
        return self._spec.direction == "bidirectional"

    @property
    def batch_first(self) -> bool:
        return self._batch_first

    @property
    def linear_before_reset(self) -> bool:
        return self._spec.linear_before_reset

    @property
    def clip(self) -> float | None:
        return self._spec.clip

    @property
    def dtype(self) -> np.dtype:
        """The dtype of inputs, states and outputs: float32 for a bfloat16 model."""
        return self._dtype

    @property
    def precision(self) -> str:
        """The dtype= the model was built with: "float32", "float64", or "bfloat16" (weights
        stored in bfloat16; biases, states, gates and outputs in float32; see
        fastgru/kernels/bfloat16.py for how they are multiplied)."""
        return self._precision

    @property
    def initial_state(self) -> np.ndarray | None:
        """The stored initial state (num_layers*dirs, H), read-only, or None: used for every
        row when a call passes no h0, and where streams start."""
        return self._initial_state

    def __repr__(self) -> str:
        stored = ", initial_state=stored" if self._initial_state is not None else ""
        return (f"fastgru.GRU(input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"num_layers={self.num_layers}, direction={self.direction!r}, "
                f"batch_first={self.batch_first}, "
                f"linear_before_reset={int(self.linear_before_reset)}, dtype={self._precision}"
                f"{stored})")

    # ---- inference -----------------------------------------------------------------------------

    def __call__(self, x, h0=None, *, lengths=None):
        """Run the whole sequence.

        Parameters
        ----------
        x : array_like, shape (T, B, D), (B, T, D) when batch_first, or (T, D) unbatched
        h0 : array_like, shape (num_layers*dirs, B, H) or (num_layers*dirs, H), optional
            Initial state; when omitted, the stored initial_state for every row, else zeros.
        lengths : array_like of int, shape (B,), optional
            Row b reads only x[:lengths[b]]; its outputs past that are 0 and its h_n is the state
            after its last valid step (a row of length 0 keeps its initial state).

        Returns
        -------
        y : ndarray, shape (T, B, dirs*H) ((B, T, dirs*H) when batch_first, (T, dirs*H) unbatched)
        h_n : ndarray, shape (num_layers*dirs, B, H) ((num_layers*dirs, H) unbatched)
        """
        x = as_float_array(x, self._dtype, "x")
        D, H, L = self.input_size, self.hidden_size, self.num_layers
        dirs = self._spec.num_directions
        layout = "(B, T, D)" if self._batch_first else "(T, B, D)"
        if x.ndim not in (2, 3):
            raise ValueError(f"x must be 3-D {layout} or 2-D (T, D) unbatched, got shape {x.shape}")
        if x.shape[-1] != D:
            raise ValueError(f"x must have {D} features (input_size) in its last axis, "
                             f"got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self._batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        T, B = x.shape[0], x.shape[1]
        if self._front is not None:
            x = self._front_input(x.reshape(T * B, D)).reshape(T, B, -1)

        h_n = np.zeros((L * dirs, B, H), dtype=self._dtype)
        if h0 is not None:
            h0 = as_float_array(h0, self._dtype, "h0")
            expected = (L * dirs, H) if unbatched else (L * dirs, B, H)
            check_shape(h0, expected, "h0", " (num_layers*num_directions, batch, hidden_size)"
                        if not unbatched else " (num_layers*num_directions, hidden_size)")
            h_n[...] = h0.reshape(L * dirs, B, H)
        elif self._initial_state is not None:
            h_n[...] = self._initial_state[:, None, :]
        steps = None if lengths is None else as_lengths(lengths, B, T)

        y = np.empty((T, B, dirs * H), dtype=self._dtype)
        ws = self._pool.take()
        try:
            if T == 1 and dirs == 1 and (steps is None or steps.min(initial=1) == 1) and \
                    (B * self._step_macs < STEP_PARALLEL_MIN_MACS or numba.get_num_threads() == 1):
                kernels.gru_stream_step(x[0], h_n, *stream_kernel_args(self, B, ws), 0, y[0])
                return self._outputs(y, h_n, unbatched)
            xproj, xproj_rows, acc, hr, h_spare, between, full = self._call_scratch(ws, T, B)
            steps = full if steps is None else steps
            state = h_n.reshape(L, dirs, B, H)
            with _RUNNING as calls, parallel_guard():
                # concurrent calls share Numba's threads rather than each claiming all of them
                threads = max(1, numba.get_num_threads() // calls)
                kernel, split = self._plan(B, dirs, threads)
                layer_in = x
                for k in range(L):
                    w = self._w0 if k == 0 else self._wrest[k - 1]
                    _project(layer_in.reshape(T * B, layer_in.shape[2]), w, xproj_rows, threads,
                             ws)
                    layer_out = y if k == L - 1 else between[k % 2]
                    args = (xproj, *self._layer_arrays[k], state[k])
                    tail = (steps, self._reverse, self.linear_before_reset, self._clip,
                            layer_out, split)
                    if kernel is kernels.gru_layer_columns:
                        size = kernels.progress_size(T, dirs * split, self.linear_before_reset)
                        progress = ws.get("progress", (size,), np.int64)
                        progress[:] = 0
                        kernel(*args, h_spare, acc, hr, *tail, progress)
                    else:
                        kernel(*args, acc, hr, *tail, self._row_group)
                    layer_in = layer_out
        finally:
            self._pool.give(ws)
        return self._outputs(y, h_n, unbatched)

    def _front_input(self, x: np.ndarray) -> np.ndarray:
        """What the kernels take as the first layer's input: x (N, D) itself, or for a model with
        a front (see FRONT_MIN_PADDING_BYTES) x @ W^T (N, dirs*3H), the input products of every
        gate and direction, x rounded to bfloat16 first where the kernels round operands."""
        if self._front is None:
            return x
        if self._w0.dtype in PAIR_MULTIPLE:
            pairs = np.empty((x.shape[0], (x.shape[1] + 1) // 2), np.uint32)
            round_to_pairs(np.ascontiguousarray(x), pairs, 0, x.shape[0])
            x = bfloat16_values(pairs.view(np.uint16)[:, :x.shape[1]])
        out = np.empty((x.shape[0], self._front.shape[0]), self._dtype)
        kernels.dot_rows(np.ascontiguousarray(x), self._front, out)
        return out

    def _call_scratch(self, ws: Workspace, T: int, B: int) -> tuple:
        """(xproj (T, B, dirs*3Hp), the same as (T*B, dirs*3Hp), acc (dirs, B, 3Hp), hr and
        h_spare (dirs, B, H), the outputs of the layers below the top [(T, B, dirs*H)] * 2 or
        none, lengths (B,) all T) for a call of T steps of B rows: made once per (T, B) and
        kept by ws, as a short call spent 2.5 us of its 10 making them."""

        def make():
            dirs, H, Hp = self._spec.num_directions, self.hidden_size, self._padded_units
            xproj = ws.get("xproj", (T, B, dirs * 3 * Hp))
            between = [ws.get(f"layer{k}", (T, B, dirs * H))
                       for k in range(min(2, self.num_layers - 1))]
            return (xproj, xproj.reshape(T * B, dirs * 3 * Hp), ws.get("acc", (dirs, B, 3 * Hp)),
                    ws.get("hr", (dirs, B, H)), ws.get("h_spare", (dirs, B, H)), between,
                    np.full(B, T, dtype=np.int64))

        return ws.derived(("call", T, B), make)

    def _outputs(self, y: np.ndarray, h_n: np.ndarray, unbatched: bool):
        """(y, h_n) in the caller's layout, from y (T, B, dirs*H) and h_n (L*dirs, B, H)."""
        if unbatched:
            return y[:, 0, :], h_n[:, 0, :]
        if self._batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        return y, h_n

    def _plan(self, B: int, dirs: int, threads: int):
        """(kernel, split) for a batch of B rows: how the work is shared among `threads`.

        Rows go to threads in blocks of whole quads (see kernels.gru_layer), each thread
        running the whole time loop for its rows. When there are fewer quads than threads, the
        hidden units are shared out instead, in slices of whole weight panels, the threads
        meeting at every step. Measured at batch 1-4 on 2 cores (T=100, D=64), sharing units
        won from the smallest weights that make two panels: H=80, batch 1, 259 -> 221 us;
        H=128 384 -> 241; H=256 1026 -> 558; H=256, batch 4, 1929 -> 1280.
        """
        blocks = max(1, min(-(-B // 4), -(-threads // dirs)))
        chunks = min(-(-threads // dirs), self._unit_panels)
        if blocks * dirs < threads and chunks > 1:
            return kernels.gru_layer_columns, chunks
        if threads > 1 and blocks * dirs > 1:
            return kernels.gru_layer, blocks
        return kernels.gru_layer_serial, 1

    def prepare(self) -> "GRU":
        """Compile (or load from Numba's on-disk cache) every kernel this model can use, now
        rather than in the first request. Returns the model."""
        dirs, H, dt = self._spec.num_directions, self.hidden_size, self._dtype
        Hp = self._padded_units
        xproj = np.zeros((1, 1, dirs * 3 * Hp), dt)
        h = np.zeros((dirs, 1, H), dt)
        scratch = (np.zeros((dirs, 1, 3 * Hp), dt), np.zeros((dirs, 1, H), dt))
        one = np.ones(1, np.int64)
        tail = (one, self._reverse, self.linear_before_reset, self._clip,
                np.zeros((1, 1, dirs * H), dt), 1)
        with parallel_guard():
            x0 = _operand(self._front_input(np.zeros((1, self.input_size), dt)), self._w0,
                          Workspace(dt))
            out = xproj.reshape(1, -1)
            kernels.project(x0, self._w0, out)  # both ways _project may go
            kernels.matvec(x0, self._w0, out, 0, 1, 0, self._w0.shape[0], False)
            layer = (xproj, *self._layer_arrays[0], h)
            kernels.gru_layer_serial(*layer, *scratch, *tail, self._row_group)
            kernels.gru_layer(*layer, *scratch, *tail, self._row_group)
            progress = np.zeros(kernels.progress_size(1, dirs, self.linear_before_reset), np.int64)
            kernels.gru_layer_columns(*layer, h.copy(), *scratch, *tail, progress)
        if self.direction == "forward":
            self.stream(1).step(np.zeros((1, self.input_size), dt))
        return self

    def stream(self, batch_size: int = 1):
        """A stateful stepper over this model for `batch_size` rows (unidirectional models)."""
        from fastgru._streams import Stream

        return Stream(self, batch_size)

    def stream_batch(self, capacity: int = 16):
        """Independent client streams stepped together as one batch (see StreamBatch)."""
        from fastgru._streams import StreamBatch

        return StreamBatch(self, capacity)
