"""How results are compared: the tolerance against onnxruntime, and a model's results in
every layout ONNX or torch uses."""

from __future__ import annotations

import numpy as np

from .case import ATOL, RTOL


def compare(actual, expected) -> tuple[bool, float]:
    """(within tolerance, max |diff|) in float64; shapes must be equal."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return False, float("inf")
    if actual.size == 0:
        return True, 0.0
    same_nan = np.isnan(actual) & np.isnan(expected)
    err = np.where(same_nan, 0.0, np.abs(actual - expected))
    ok = bool(np.all(err <= ATOL + RTOL * np.abs(expected)))
    return ok, float(np.nanmax(np.where(np.isnan(err), np.inf, err)))


def model_layouts(y, h_n, m) -> dict:
    """The model's results in every layout ONNX or torch uses: {description: array}."""
    dirs = 2 if m.bidirectional else 1
    H, L = m.hidden_size, m.num_layers
    y_tm = np.swapaxes(y, 0, 1) if m.batch_first else y
    T, B = y_tm.shape[:2]
    Y = y_tm.reshape(T, B, dirs, H).transpose(0, 2, 1, 3)
    out = {"y (T, B, dirs*H)": y_tm, "y batch-first (B, T, dirs*H)": np.swapaxes(y_tm, 0, 1),
           "Y (T, dirs, B, H)": Y, "Y layout 1 (B, T, dirs, H)": Y.transpose(2, 0, 1, 3),
           "y.view(T, B, dirs, H)": y_tm.reshape(T, B, dirs, H),
           "h_n (layers*dirs, B, H)": h_n,
           "h_n.view(layers, dirs, B, H)": h_n.reshape(L, dirs, B, H)}
    for k in range(L):  # each layer's Y_h: the top one, and h_n's slices of the others
        state = h_n[k * dirs:(k + 1) * dirs]
        which = "the top layer's Y_h" if k == L - 1 else f"layer {k}'s Y_h (h_n's slice)"
        out[f"{which} (dirs, B, H)"] = state
        out[f"{which} (B, dirs, H)"] = np.swapaxes(state, 0, 1)
    if dirs == 1:
        out["the top layer's Y_h squeezed (B, H)"] = h_n[-1]
    return out


def shape_text(a) -> str:
    return str(tuple(np.shape(a)))
