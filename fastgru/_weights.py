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
class LayerWeights:
    """One layer, all directions, as ONNX stores a GRU node.

    w : ndarray, shape (dirs, 3H, D_in)
    r : ndarray, shape (dirs, 3H, H)
    b : ndarray, shape (dirs, 6H), [Wb_z, Wb_r, Wb_n, Rb_z, Rb_r, Rb_n] (zeros when no bias)
    """

    w: np.ndarray
    r: np.ndarray
    b: np.ndarray


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


def bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """The bits (uint16) of the bfloat16 nearest each value of `a` taken as float32, ties to
    even: what torch's float32 .to(torch.bfloat16) gives for finite values."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bits (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
