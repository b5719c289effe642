"""A model's weights as the kernels read them: packed once from a GRUSpec for one precision and
this CPU, then read-only (shared by every call and stream of the model)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fastgru._boundary import memory_bytes
from fastgru._weights import GRUSpec, bfloat16_bits, int8_weights, step_macs
from fastgru.kernels import cpu, int8_pack, layout
from fastgru.kernels.bfloat16 import pack as pack_bfloat16
from fastgru.kernels.cpu import empty_aligned
from fastgru.kernels.int8_pack import Int8Weights

# Packing input weights into panels pads each gate to a multiple of the panel width (64 float32
# units with AVX-512), which for a very narrow, very wide model (H=1, hundreds of thousands of
# inputs) multiplies the weights' size many times over. Where the padding of the first layer's
# input weights would exceed twice those weights and this many bytes, its input product runs
# before the kernels instead (execution.front_input, NumPy's product on the weights unpadded),
# and the kernels take that product as their input, through an identity of 3H inputs: the
# kernels' copy then stays within a small multiple of the weights. Far beyond S1-S6 (whose H is
# a multiple of 64), so their kernels and results are unchanged. What it cost before:
# bench/RESULTS.md, "Thresholds in the code" (narrow models).
FRONT_MIN_PADDING_BYTES = 16 << 20

def frozen(array: np.ndarray) -> np.ndarray:
    """A read-only copy of `array` for the kernels, starting on a cache line."""
    copy = empty_aligned(array.shape, array.dtype)
    copy[...] = array
    copy.setflags(write=False)
    return copy


def _stack(entries: list, like=None):
    """Read-only arrays (or Int8Weights, array by array) stacked along a new first axis; with
    no entries, an empty stack of entries like `like`."""
    if entries and isinstance(entries[0], Int8Weights):
        return Int8Weights(*(frozen(np.array(arrays)) for arrays in zip(*entries, strict=True)))
    if isinstance(like, Int8Weights):
        return Int8Weights(*(frozen(np.zeros((0, *a.shape), a.dtype)) for a in like))
    if not entries:
        return frozen(np.zeros((0, *like.shape), like.dtype))
    return frozen(np.array(entries))


def _freeze(entry):
    """A read-only copy of an array, or of each array of Int8Weights."""
    if isinstance(entry, Int8Weights):
        return Int8Weights(*(frozen(a) for a in entry))
    return frozen(entry)


def _entry(stacked, k: int):
    """Entry k of stacked arrays or Int8Weights."""
    if isinstance(stacked, Int8Weights):
        return Int8Weights(*(a[k] for a in stacked))
    return stacked[k]


def _int8_operands(quantized: list, dirs: int, H: int, path: str) -> tuple[list, Int8Weights]:
    """The input weights of each layer (all directions' gates stacked, as one product projects
    them) and the recurrent weights (layers, dirs, ...) packed for the int8 kernels' `path`
    (kernels/int8_pack.py)."""
    ws = [int8_pack.pack(q.w_values.reshape(dirs * 3 * H, -1), q.w_scales.reshape(-1), H, path)
          for q in quantized]
    r = _stack([_stack([int8_pack.pack(q.r_values[d], q.r_scales[d], H, path)
                        for d in range(dirs)]) for q in quantized])
    return ws, r


@dataclass(frozen=True, eq=False)
class PackedWeights:
    """The kernel operands of one model, in the kernels' gate-column layout (each gate padded to
    `padded_units` units, weights packed into panels; see fastgru/kernels/layout.py). An int8
    model's weights are Int8Weights (kernels/int8_pack.py) whose arrays are stacked as the
    arrays of the others.

    w0 : the first layer's input weights, all directions stacked so that one product projects
        the whole sequence (an identity of dirs*3H inputs when `front` holds them instead)
    wrest : the other layers' input weights, stacked (empty for one layer)
    r : the recurrent weights, (layers, dirs, ...)
    bx, rbn : the biases folded into the input products, and Rb_n kept apart, per layer
    front : the first layer's unpadded input weights (dirs*3H, D) when their product runs
        before the kernels (see FRONT_MIN_PADDING_BYTES), else None
    step_macs : the kernels' multiply-adds of one step of one batch row, all layers
    kernel_path : the bfloat16 or int8 kernel variant (kernels/cpu.py, kernel_path), None for
        float32/float64
    """

    precision: str
    dtype: np.dtype  # of inputs, states, outputs and biases
    direction: str
    num_directions: int
    num_layers: int
    input_size: int
    hidden_size: int
    linear_before_reset: bool
    clip: object  # the clip in the kernels' dtype, or None (kernels compiled without it)
    padded_units: int
    unit_panels: int  # weight panels per gate
    row_group: int
    step_macs: int
    kernel_path: str | None
    front: np.ndarray | None
    w0: np.ndarray
    wrest: np.ndarray
    r: np.ndarray
    bx: np.ndarray
    rbn: np.ndarray
    layer_arrays: tuple  # (bx, r, rbn) of each layer
    reverse: np.ndarray  # (dirs,) bool: which directions run backwards
    initial_state: np.ndarray | None  # (num_layers*dirs, H), read-only

    def input_weights(self, k: int):
        """Layer k's packed input weights (all directions' gates)."""
        return self.w0 if k == 0 else _entry(self.wrest, k - 1)

    @classmethod
    def pack(cls, spec: GRUSpec, precision: str, kernel_path: str | None = None) -> PackedWeights:
        """Pack `spec`, whose arrays already hold the model's values (bfloat16 weights as exact
        float32, int8 ones in its layers' int8), for `precision` ("float32", "float64",
        "bfloat16" or "int8"); kernel_path names the bfloat16 or int8 variant (default: the
        fastest this CPU runs; see cpu.kernel_path). Ignored for float32 and float64."""
        bfloat16, int8 = precision == "bfloat16", precision == "int8"
        dt = np.dtype(np.float32 if bfloat16 or int8 else precision)
        path = cpu.kernel_path(precision, kernel_path)
        dirs, H = spec.num_directions, spec.hidden_size
        quantized = [int8_weights(layer) for layer in spec.layers] if int8 else None
        if int8 and kernel_path is None and \
                max(H, *(layer.w.shape[-1] for layer in spec.layers)) > int8_pack.MAX_INPUTS:
            path = "widen"  # more inputs than vnni sums exactly: the path every CPU runs

        def weights(a):  # packed weights as the kernels read them (see kernels/bfloat16.py)
            return pack_bfloat16(bfloat16_bits(a), path) if bfloat16 else a

        Hp = layout.padded_units(H, dt)
        item = 1 if int8 else 2 if bfloat16 else dt.itemsize
        w0 = spec.layers[0].w.reshape(dirs * 3 * H, -1)
        padding = dirs * 3 * (Hp - H) * w0.shape[1] * item
        front = None
        if padding > max(2 * w0.size * item, FRONT_MIN_PADDING_BYTES):
            front = frozen(w0.astype(dt))
            w0 = np.eye(dirs * 3 * H)
            if int8:  # the identity, exact in int8
                quantized[0] = replace(quantized[0], w_values=w0.astype(np.int8),
                                       w_scales=np.ones(dirs * 3 * H, np.float32))
        inputs = [w0.shape[1]] + [layer.w.shape[-1] for layer in spec.layers[1:]]  # kernels'
        packed = step_macs(inputs, H, dirs, Hp)  # weights per batch row
        if packed * item > memory_bytes() // 2:  # checked before the packed copies are made
            raise ValueError(
                f"this model's kernel weights would take {packed * item / 2**30:.1f} GiB (each "
                f"gate padded to {Hp} units), more than half this machine's memory")
        if int8:
            ws, r = _int8_operands(quantized, dirs, H, path)
        else:
            ws = [weights(layout.pack_gate_rows(w.reshape(dirs * 3 * H, -1).astype(dt), H))
                  for w in [w0, *(layer.w for layer in spec.layers[1:])]]
            r = frozen(np.array([[weights(layout.pack_gate_rows(r.astype(dt), H))
                                  for r in layer.r] for layer in spec.layers]))
        bx, rbn = [], []
        for layer in spec.layers:
            wb, rb = layer.b[:, :3 * H], layer.b[:, 3 * H:]
            folded = wb + rb
            if spec.linear_before_reset:  # R_n h + Rb_n is multiplied by r: keep Rb_n apart
                folded[:, 2 * H:] = wb[:, 2 * H:]
            bx.append(layout.pad_gate_columns(folded.astype(dt), H))
            rbn.append(rb[:, 2 * H:])
        bx, rbn = frozen(np.array(bx, dtype=dt)), frozen(np.array(rbn, dtype=dt))
        reverse = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}
        return cls(
            precision=precision, dtype=dt, direction=spec.direction, num_directions=dirs,
            num_layers=len(spec.layers), input_size=spec.input_size, hidden_size=H,
            linear_before_reset=spec.linear_before_reset,
            # None compiles kernels without the clip's comparisons (the reason and its cost:
            # bench/RESULTS.md, "How it computes", Gates)
            clip=None if spec.clip is None else dt.type(spec.clip),
            padded_units=Hp, unit_panels=Hp // layout.panel_width(dt),
            row_group=layout.row_group(H, dt),
            step_macs=packed + (0 if front is None else front.size), kernel_path=path,
            front=front, w0=_freeze(ws[0]), wrest=_stack(ws[1:], ws[0]),
            r=r, bx=bx, rbn=rbn,
            layer_arrays=tuple((bx[k], _entry(r, k), rbn[k]) for k in range(len(spec.layers))),
            reverse=frozen(np.array(reverse[spec.direction], dtype=np.bool_)),
            initial_state=None if spec.initial_state is None else
            frozen(spec.initial_state.astype(dt)))
