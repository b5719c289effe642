"""The canonical weight layout that every loader produces and every exporter reads.

Gates follow ONNX order (z, r, n) for every source; loaders reorder PyTorch's (r, z, n).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIRECTIONS = ("forward", "reverse", "bidirectional")


def num_directions(direction: str) -> int:
    """How many directions a GRU of `direction` runs: 2 for "bidirectional", else 1."""
    return 2 if direction == "bidirectional" else 1


def step_macs(inputs, hidden_size: int, directions: int, units: int | None = None) -> int:
    """Multiply-adds of one step of one batch row, all layers and directions: three gates of
    `units` outputs each (hidden_size, or the kernels' padded count) over each layer's inputs
    (`inputs`: one size per layer) and the state. Twice this is the step's FLOPs."""
    units = hidden_size if units is None else units
    return sum(3 * units * directions * (d_in + hidden_size) for d_in in inputs)


@dataclass(frozen=True)
class Int8Layer:
    """A layer's weights in int8, symmetric, one scale per output row (gate and unit):
    W = w_values * w_scales[..., None], R likewise (the scale rule: int8_weights).

    w_values : ndarray int8, shape (dirs, 3H, D_in);  w_scales : float32, shape (dirs, 3H)
    r_values : ndarray int8, shape (dirs, 3H, H);     r_scales : float32, shape (dirs, 3H)
    """

    w_values: np.ndarray
    w_scales: np.ndarray
    r_values: np.ndarray
    r_scales: np.ndarray

    def dequantized(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, R) as float32 (see `dequantized`)."""
        return (dequantized(self.w_values, self.w_scales),
                dequantized(self.r_values, self.r_scales))


def dequantized(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """int8 values (..., rows, K) times their rows' scales (..., rows), as float32, each product
    rounded once: the float weights an int8 model stands for."""
    return np.asarray(values, np.float32) * np.asarray(scales, np.float32)[..., None]


@dataclass(frozen=True)
class LayerWeights:
    """One layer, all directions, as ONNX stores a GRU node.

    w : ndarray, shape (dirs, 3H, D_in)
    r : ndarray, shape (dirs, 3H, H)
    b : ndarray, shape (dirs, 6H), [Wb_z, Wb_r, Wb_n, Rb_z, Rb_r, Rb_n] (zeros when no bias)
    int8 : the same W and R as int8 values and scales (w and r then hold them dequantized),
        where the weights came quantized (torch's quantize_dynamic, ONNX DequantizeLinear) or
        a dtype="int8" model quantized them; None otherwise
    """

    w: np.ndarray
    r: np.ndarray
    b: np.ndarray
    int8: Int8Layer | None = None


@dataclass(frozen=True)
class GRUSpec:
    """Everything that defines a GRU stack, independent of where the weights came from.

    initial_state : ndarray, shape (num_layers*dirs, H), optional
        A stored (learned) initial state, used for every batch row when a call passes no h0.
    """

    layers: tuple[LayerWeights, ...]
    direction: str = "forward"
    linear_before_reset: bool = True
    clip: float | None = None
    initial_state: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not self.layers:
            raise ValueError("a GRU needs at least one layer, got none")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be a positive number or None, got {self.clip!r}")
        dirs = self.num_directions
        hidden = self.layers[0].r.shape[-1]
        for k, layer in enumerate(self.layers):
            d_in = self.layers[0].w.shape[-1] if k == 0 else dirs * hidden
            expected = {"w": (dirs, 3 * hidden, d_in), "r": (dirs, 3 * hidden, hidden),
                        "b": (dirs, 6 * hidden)}
            for name, shape in expected.items():
                array = getattr(layer, name)
                if array.shape != shape:
                    raise ValueError(
                        f"layer {k}: {name} must have shape {shape} for hidden_size={hidden}, "
                        f"{dirs} direction(s), got {array.shape}")
                if not np.isfinite(array).all():
                    raise ValueError(f"layer {k}: {name} contains NaN or inf")
            if layer.int8 is not None:
                _check_int8(k, layer.int8, expected)
        if self.initial_state is not None:
            state = np.asarray(self.initial_state)
            expected = (len(self.layers) * dirs, hidden)
            if state.shape != expected:
                raise ValueError(f"initial_state must have shape {expected} (num_layers*dirs, "
                                 f"hidden_size), got {state.shape}")
            if state.dtype.kind != "f" or not np.isfinite(state).all():
                raise ValueError("initial_state must hold finite floating-point values")

    @property
    def num_directions(self) -> int:
        return num_directions(self.direction)

    @property
    def hidden_size(self) -> int:
        return self.layers[0].r.shape[-1]

    @property
    def input_size(self) -> int:
        return self.layers[0].w.shape[-1]


def _check_int8(k: int, int8: Int8Layer, expected: dict) -> None:
    """Refuse int8 weights of the wrong shapes or types, or scales that are not finite and
    non-negative."""
    for name in ("w", "r"):
        values, scales = getattr(int8, f"{name}_values"), getattr(int8, f"{name}_scales")
        if np.asarray(values).dtype != np.int8 or np.shape(values) != expected[name]:
            raise ValueError(f"layer {k}: int8 {name} values must be int8 of shape "
                             f"{expected[name]}, got {np.asarray(values).dtype} "
                             f"{np.shape(values)}")
        scales = np.asarray(scales)
        if scales.shape != expected[name][:2] or scales.dtype.kind != "f" \
                or not (np.isfinite(scales) & (scales >= 0)).all():
            raise ValueError(f"layer {k}: int8 {name} scales must be finite, non-negative "
                             f"floats of shape {expected[name][:2]}, got {scales.dtype} "
                             f"{scales.shape}")


def int8_weights(layer: LayerWeights) -> Int8Layer:
    """The layer's W and R in int8: its own int8 values where it has them, else quantized
    symmetrically per output row: scale = max|row| / 127 (float32), value = round(w / scale)
    (ties to even) in [-127, 127]; a row of zeros gets scale 0."""
    if layer.int8 is not None:
        return layer.int8
    from fastgru.kernels.int8_pack import quantize_weights

    def quantized(a):
        values, scales = quantize_weights(a.reshape(-1, a.shape[-1]))
        return values.reshape(a.shape), scales.reshape(a.shape[:-1])

    return Int8Layer(*quantized(layer.w), *quantized(layer.r))


def bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """The bits (uint16) of the bfloat16 nearest each value of `a` taken as float32, ties to
    even: what torch's float32 .to(torch.bfloat16) gives for finite values."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bits (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
