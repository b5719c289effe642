"""The graph generator: one random graph of 1-3 GRU nodes and what exporters write around
them, the same for the same seed."""

from __future__ import annotations

import numpy as np

from .case import FLOAT, OPSETS, Case
from .outputs import Builder


def generate(seed: int) -> Case:
    """One random graph (see the module's docstring), the same for the same seed."""
    rng = np.random.default_rng(seed)
    opset = int(rng.integers(OPSETS[0], OPSETS[1] + 1))
    nominal = {"T": int(rng.integers(2, 7)), "B": int(rng.integers(1, 5)),
               "T2": int(rng.integers(1, 7))}
    b = Builder(rng, opset, nominal)
    d = int(rng.integers(1, 9))
    x_main, x_const = None, None
    if b.chance(0.05):  # X is an initializer: the graph runs at one size
        x_const = rng.standard_normal((nominal["T"], nominal["B"], d)).astype(np.float32)
        x = b.constant(x_const, "X", node=False)
        b.shapes[x] = ("T", "B", d)
        b.fix("T")
        b.fix("B")
        x_main = x
    else:
        x = x_main = b.sequence_input("X", "T", d)
        x_main = "X"
    topology = b.pick(["stack", "encdec", "parallel"], p=[0.6, 0.2, 0.2])
    # an exporter's plain stack: nothing in front, the stack's outputs only
    clean = topology == "stack" and b.chance(0.4)
    if not clean:
        x, d = b.front_end(x, d)
    lens_kind = b.pick(["none", "input", "const"], p=[0.5, 0.35, 0.15])
    state_kinds = ["none", "zeros_shape", "zeros_expand", "zeros_const", "const", "stored",
                   "input"]
    state_p = np.array([4, 1, 1, 0.5 * (not clean), 1 * (not clean), 1, 3])
    state_p = state_p / state_p.sum()
    combined = None
    if topology == "stack":
        n = int(b.pick([1, 2, 3], p=[0.35, 0.45, 0.2]))
        opts = b.options()
        same = b.chance(0.8)
        lens_everywhere = b.chance(0.75)
        if n > 1 and same and b.chance(0.25):  # torch's h0 (layers*dirs, B, H), sliced per layer
            dirs = 2 if opts["direction"] == "bidirectional" else 1
            combined = b.name("state")
            b.combined_layers = n
            b.declare(combined, FLOAT, (n * dirs, "B", opts["hidden"]), "state")
        second_lens = n > 1 and lens_kind == "input" and b.chance(0.1)
        layers = []
        for k in range(n):
            layer_opts = opts if same or k == 0 else b.options(None if b.chance(0.5) else opts)
            if not same and k > 0 and b.chance(0.5):
                layer_opts = dict(opts, hidden=int(rng.integers(1, 9)))
            dirs = 2 if layer_opts["direction"] == "bidirectional" else 1
            kind = "combined" if combined else b.pick(state_kinds, p=state_p)
            below = layers[-1] if layers else None
            if below is not None and not combined and b.chance(0.08) and \
                    (below.dirs, below.hidden) == (dirs, layer_opts["hidden"]) and \
                    b.shapes[below.y_h][1] == (b.shapes.get(x) or (0, 0))[1]:
                h0 = (b.maybe_identity(below.y_h), {"h0_kind": "gru"})  # the state passed up
                b.notes.append("a layer starts from the state of the one below")
            else:
                h0 = b.initial_state(kind, x, dirs, layer_opts["hidden"], combined, k)
            if k > 0 and second_lens:
                lens = b.lengths("input2", x)
            else:
                lens = b.lengths(lens_kind, x) if k == 0 or lens_everywhere else ("", "none")
            g = b.gru(x, d, layer_opts, h0, lens)
            layers.append(g)
            if k < n - 1:
                if b.chance(0.8):
                    x, d = b.to_sequence(g), g.dirs * g.hidden
                else:
                    x, d = b.odd_plumbing(g)
        b.add_outputs(layers[-1], layers, clean=clean)
        summary = f"{'plain ' if clean else ''}stack of {n} " \
                  f"({'same options' if same else 'options differ'})"
    elif topology == "encdec":
        n = int(b.pick([1, 2]))
        opts = b.options()
        encoder = []
        for k in range(n):
            kind = b.pick(state_kinds, p=state_p)
            h0 = b.initial_state(kind, x, 2 if opts["direction"] == "bidirectional" else 1,
                                 opts["hidden"])
            g = b.gru(x, d, opts, h0, b.lengths(lens_kind, x))
            encoder.append(g)
            if k < n - 1:
                x, d = b.to_sequence(g), g.dirs * g.hidden
        reads = b.pick(["X2", "X", "encoder"], p=[0.5, 0.15, 0.35])
        if reads == "X2":
            d2 = int(rng.integers(1, 9))
            x2 = b.sequence_input("X2", "T2", d2)
        elif reads == "X":  # the same sequence as the encoder
            x2, d2 = encoder[0].x, b.shapes[encoder[0].x][2]
        else:  # the decoder reads the encoder's output sequence
            x2, d2 = b.to_sequence(encoder[-1]), encoder[-1].dirs * encoder[-1].hidden
        dec_opts = dict(opts, lbr=int(rng.integers(0, 2))) if b.chance(0.4) else dict(opts)
        decoder = []
        m = 1  # at most 3 GRU nodes
        for k in range(m):
            source = encoder[n - m + k]
            h0 = (b.maybe_identity(source.y_h, 0.3), {"h0_kind": "gru"})
            g = b.gru(x2, d2, dec_opts, h0)
            decoder.append(g)
            if k < m - 1:
                x2, d2 = b.to_sequence(g), g.dirs * g.hidden
        b.add_outputs(decoder[-1], decoder)
        if b.chance(0.3):
            b.add_outputs(encoder[-1], encoder, 1)
        summary = f"encoder ({n}) -> decoder ({m}), decoder input {reads}"
    else:
        a_opts, b_opts = b.options(), b.options()
        ga = b.gru(x, d, a_opts, b.initial_state(b.pick(state_kinds, p=state_p), x,
                                                 2 if a_opts["direction"] == "bidirectional"
                                                 else 1, a_opts["hidden"]),
                   b.lengths(lens_kind, x))
        shared = b.chance(0.15)  # the same weights for both (identical nodes would be merged
        # by onnxruntime's common subexpression elimination, which then fails to load them)
        if shared:
            b_opts = dict(a_opts, lbr=1 - a_opts["lbr"])
        gb = b.gru(x, d, b_opts, ("", {}),
                   b.lengths(lens_kind, x) if b.chance(0.5) else ("", "none"),
                   weights=b.weights if shared else None)
        merge = b.pick(["gru", "out", "separate"])
        if merge == "separate":
            b.add_outputs(ga, [ga], 1)
            b.add_outputs(gb, [gb], 1)
        else:
            ya, yb = b.to_sequence(ga), b.to_sequence(gb)
            T, B, _ = b.shapes[ya]
            n = ga.dirs * ga.hidden + gb.dirs * gb.hidden
            both = b.op("Concat", [ya, yb], (T, B, n), axis=2)
            if merge == "out":
                from onnx import helper

                value = b.head(both) if b.chance(0.5) else both
                b.outputs.append(helper.make_tensor_value_info(value, FLOAT, None))
                if b.chance(0.3):
                    b.add_outputs(ga, [ga], 1)
            else:
                gc = b.gru(both, n, b.options())
                b.add_outputs(gc, [gc])
        summary = f"two GRUs side by side{' sharing weights' if shared else ''}, merged: {merge}"
    if not b.outputs:
        b.add_outputs(b.grus[-1], [b.grus[-1]], 1)
    if not b.outputs:
        from onnx import helper

        b.outputs.append(helper.make_tensor_value_info(b.grus[-1].y, FLOAT, None))
    notes = "".join(f"; {note}" for note in dict.fromkeys(b.notes))
    return b.finish(seed, x_main, x_const, combined, f"opset {opset}, {summary}{notes}")
