"""The public surface: GRU, an immutable model with the torch.nn.GRU calling convention."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fastgru import _execution as execution
from fastgru._boundary import as_float_array, as_lengths, check_shape, resolve_dtype
from fastgru._packed import PackedWeights
from fastgru._streams import Stream, StreamBatch
from fastgru._weights import (GRUSpec, Int8Layer, LayerWeights, bfloat16_bits, bfloat16_values,
                             int8_weights)
from fastgru._workspace import WorkspacePool


def _rebuild(spec: GRUSpec, batch_first: bool, dtype: str,
             kernel_path: str | None = None) -> "GRU":
    """Unpickling: the model from its weights and options."""
    return GRU(spec, batch_first=batch_first, dtype=dtype, kernel_path=kernel_path)


class GRU:
    """A multi-layer GRU with the torch.nn.GRU calling convention, computed by Numba kernels.

    Build one with :meth:`from_torch` or :meth:`from_onnx`, or directly from a
    :class:`fastgru._weights.GRUSpec`. The object is immutable and may be called from many threads
    at once.
    """

    def __init__(self, spec: GRUSpec, *, batch_first: bool = False, dtype=None,
                 initial_state=None, kernel_path: str | None = None) -> None:
        """dtype: "float32", "float64", "bfloat16" or "int8" (see `precision`); by default
        "int8" where the weights came quantized (every layer of the spec holds int8 values),
        else "float32". kernel_path: the kernel variant of a bfloat16 model, one of
        kernels.cpu.BF16_PATHS ("widen", "dot", "tiles"), or of an int8 model, one of
        kernels.cpu.INT8_PATHS ("widen", "vnni"): those this CPU runs; None, the default, takes
        the fastest. For tools and tests that compare variants; ignored for float32 and
        float64."""
        if dtype is None:
            dtype = "int8" if all(layer.int8 is not None for layer in spec.layers) else "float32"
        self._precision = resolve_dtype(dtype)
        bfloat16 = self._precision == "bfloat16"
        narrow = self._precision in ("bfloat16", "int8")  # weights narrower than x, h and y
        self._dtype = np.dtype(np.float32 if narrow else self._precision)  # x, h, y, biases
        if initial_state is not None:  # overrides the spec's; validated by GRUSpec
            spec = replace(spec, initial_state=np.asarray(initial_state))

        def own(a, weight=False):  # in the model's dtype (bfloat16 weights as exact float32)
            a = np.array(a, self._dtype)
            return bfloat16_values(bfloat16_bits(a)) if weight and bfloat16 else a

        def own_layer(layer):
            if self._precision != "int8":  # int8 values of a quantized source are dropped
                return LayerWeights(own(layer.w, True), own(layer.r, True), own(layer.b))
            int8 = int8_weights(layer)  # kept as they came (a copy: the caller's stay theirs)
            arrays = [np.array(a) for a in (int8.w_values, int8.w_scales, int8.r_values,
                                            int8.r_scales)]
            for array in arrays:
                array.setflags(write=False)
            int8 = Int8Layer(*arrays)
            return LayerWeights(*int8.dequantized(), own(layer.b), int8)

        # The model holds its weights in its own dtype; spec shows exactly those values, so
        # saving and exporting reproduce this model bit for bit (and no wider copy is kept).
        # An int8 model's spec also holds the int8 values and scales its kernels multiply.
        spec = replace(spec, layers=tuple(own_layer(layer) for layer in spec.layers),
                       initial_state=None if spec.initial_state is None else
                       own(spec.initial_state))
        for array in (*(a for layer in spec.layers for a in (layer.w, layer.r, layer.b)),
                      *([] if spec.initial_state is None else [spec.initial_state])):
            array.setflags(write=False)  # what save() and to_onnx() write is what runs
        self._spec = spec
        self._batch_first = bool(batch_first)
        self._kernel_path = kernel_path  # as asked: None follows the CPU wherever the model goes
        self._packed = PackedWeights.pack(spec, self._precision, kernel_path)  # kernels' arrays
        self._pool = WorkspacePool(self._dtype)  # scratch, one workspace per concurrent call

    def __reduce__(self):
        """Pickles as weights and options (not workspaces or locks): for multiprocessing's
        spawn, distributed workers and copy.deepcopy. Unpickling rebuilds an equal model."""
        named = () if self._kernel_path is None else (self._kernel_path,)  # older readers take 3
        return (_rebuild, (self._spec, self._batch_first, self._precision, *named))

    # ---- construction from other tools -------------------------------------------------------

    @classmethod
    def from_torch(cls, src, *, prefix=None, batch_first=None, dtype=None) -> "GRU":
        """Load PyTorch weights.

        src is a torch.nn.GRU or nn.GRUCell module, a state dict (name -> tensor or ndarray), or a
        path to a .pt/.pth/.bin file (read with torch.load(weights_only=True)) or a .safetensors
        file (read without torch). prefix selects one GRU in a larger state dict
        ("encoder.rnn."); without it, the one GRU in the dict is found. batch_first defaults to
        the module's own, else False. A GRU module quantized by torch's quantize_dynamic
        (qint8 weights, symmetric, per tensor or per row) keeps its int8 values and scales, and
        is an int8 model unless dtype= says otherwise (then the dequantized weights are used).
        """
        from fastgru.loaders.torch import spec_from_torch

        spec, module_batch_first = spec_from_torch(src, prefix=prefix)
        first = module_batch_first if batch_first is None else batch_first
        return cls(spec, batch_first=first, dtype=dtype)

    @classmethod
    def from_onnx(cls, src, *, node=None, batch_first=None, dtype=None) -> "GRU":
        """Load the GRU stack of an ONNX model (ModelProto, bytes or path).

        The graph may hold one GRU node or the chain torch.onnx.export writes for a stacked
        nn.GRU; node= reads only the GRU node of that name. batch_first defaults to what the
        graph says (layout=1, or a Transpose in front of the first layer).
        """
        from fastgru.loaders.onnx import spec_from_onnx

        spec, layout_batch_first = spec_from_onnx(src, node=node)
        first = layout_batch_first if batch_first is None else batch_first
        return cls(spec, batch_first=first, dtype=dtype)

    @classmethod
    def from_keras(cls, src, *, layer=None, dtype=None) -> "GRU":
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
        """The dtype of inputs, states and outputs: float32 for a bfloat16 or int8 model."""
        return self._dtype

    @property
    def precision(self) -> str:
        """The dtype= the model was built with: "float32", "float64", "bfloat16" (weights
        stored in bfloat16; biases, states, gates and outputs in float32; see
        fastgru/kernels/bfloat16.py for how they are multiplied) or "int8" (weights stored in
        int8 with a scale per row, the rest in float32; see docs/int8.md)."""
        return self._precision

    @property
    def initial_state(self) -> np.ndarray | None:
        """The stored initial state (num_layers*dirs, H), read-only, or None: used for every
        row when a call passes no h0, and where streams start."""
        return self._packed.initial_state

    def __repr__(self) -> str:
        stored = ", initial_state=stored" if self.initial_state is not None else ""
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
        dirs = self._packed.num_directions
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
        B = x.shape[1]
        h_n = np.zeros((L * dirs, B, H), dtype=self._dtype)
        if h0 is not None:
            h0 = as_float_array(h0, self._dtype, "h0")
            expected = (L * dirs, H) if unbatched else (L * dirs, B, H)
            check_shape(h0, expected, "h0", " (num_layers*num_directions, batch, hidden_size)"
                        if not unbatched else " (num_layers*num_directions, hidden_size)")
            h_n[...] = h0.reshape(L * dirs, B, H)
        elif self.initial_state is not None:
            h_n[...] = self.initial_state[:, None, :]
        steps = None if lengths is None else as_lengths(lengths, B, x.shape[0])
        y = execution.run_sequence(self._packed, self._pool, x, h_n, steps)
        return self._outputs(y, h_n, unbatched)

    def _outputs(self, y: np.ndarray, h_n: np.ndarray, unbatched: bool):
        """(y, h_n) in the caller's layout, from y (T, B, dirs*H) and h_n (L*dirs, B, H)."""
        if unbatched:
            return y[:, 0, :], h_n[:, 0, :]
        if self._batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        return y, h_n

    def prepare(self) -> "GRU":
        """Compile (or load from Numba's on-disk cache) every kernel this model can use, now
        rather than in the first request. Returns the model."""
        execution.compile_kernels(self._packed)
        if self.direction == "forward":
            self.stream(1).step(np.zeros((1, self.input_size), self._dtype))
        return self

    def stream(self, batch_size: int = 1):
        """A stateful stepper over this model for `batch_size` rows (unidirectional models)."""
        return Stream(self._packed, batch_size)

    def stream_batch(self, capacity: int = 16):
        """Independent client streams stepped together as one batch (see StreamBatch)."""
        return StreamBatch(self._packed, capacity)
