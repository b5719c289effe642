"""A slow, obvious GRU written from the equations in DESIGN.md, in float64. Tests compare to it.

Weights in the ONNX layout: per layer, W (dirs, 3H, D_in), R (dirs, 3H, H), B (dirs, 6H), gates
(z, r, n). Time-major: x (T, B, D) -> y (T, B, dirs*H), h_n (layers*dirs, B, H).
"""

from __future__ import annotations

import numpy as np


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def reference_gru(x, layers, *, direction="forward", linear_before_reset=True, clip=None,
                  h0=None, lengths=None, operand=None):
    """layers: a list of (W, R, B) per layer. Returns (y, h_n) in float64.

    operand, when given, is applied to every vector a weight matrix multiplies (x_t, h, r * h):
    rounding them to bfloat16 models a bfloat16 dot product.
    """
    op = (lambda v: v) if operand is None else operand
    x = np.asarray(x, dtype=np.float64)
    T, batch = x.shape[:2]
    H = layers[0][1].shape[-1]
    dirs = 2 if direction == "bidirectional" else 1
    lengths = np.full(batch, T) if lengths is None else np.asarray(lengths)
    h_n = np.zeros((len(layers) * dirs, batch, H))
    if h0 is not None:
        h_n[...] = h0
    cl = (lambda v: v) if clip is None else (lambda v: np.clip(v, -clip, clip))
    inp = x
    for k, (W, R, Bias) in enumerate(layers):
        out = np.zeros((T, batch, dirs * H))
        for d in range(dirs):
            backwards = direction == "reverse" or d == 1
            Wz, Wr, Wn = np.split(np.asarray(W[d], np.float64), 3)
            Rz, Rr, Rn = np.split(np.asarray(R[d], np.float64), 3)
            bWz, bWr, bWn, bRz, bRr, bRn = np.split(np.asarray(Bias[d], np.float64), 6)
            for b in range(batch):
                h = h_n[k * dirs + d, b].copy()
                steps = range(lengths[b] - 1, -1, -1) if backwards else range(lengths[b])
                for t in steps:
                    xt, hv = op(inp[t, b]), op(h)
                    z = _sigmoid(cl(Wz @ xt + bWz + Rz @ hv + bRz))
                    r = _sigmoid(cl(Wr @ xt + bWr + Rr @ hv + bRr))
                    if linear_before_reset:
                        n = np.tanh(cl(Wn @ xt + bWn + r * (Rn @ hv + bRn)))
                    else:
                        n = np.tanh(cl(Wn @ xt + bWn + Rn @ op(r * h) + bRn))
                    h = (1 - z) * n + z * h
                    out[t, b, d * H:(d + 1) * H] = h
                h_n[k * dirs + d, b] = h
        inp = out
    return inp, h_n
