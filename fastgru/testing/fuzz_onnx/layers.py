"""The generated GRU nodes, and the plumbing between stacked layers as exporters write it
(or not quite)."""

from __future__ import annotations

import numpy as np

from .case import FLOAT, INT64, INT64_MIN, GruInfo
from .graph import one_unknown
from .sources import Sources


class Layers(Sources):
    # GRU nodes
    def options(self, like: dict | None = None) -> dict:
        if like is not None:
            return dict(like)
        direction = self.pick(["forward", "reverse", "bidirectional"])
        clip = None if self.chance(0.75) else float(self.pick([0.5, 1.0, 3.0]))
        return {"direction": direction, "hidden": int(self.rng.integers(1, 9)),
                "lbr": int(self.rng.integers(0, 2)), "clip": clip, "bias": self.chance(0.8)}

    def weight(self, array: np.ndarray, stem: str) -> str:
        """A weight as an initializer or Constant, or computed from stored parts as exporters
        write it (Concat of the gates, Unsqueeze of a 2-D weight)."""
        array = array.astype(np.float32)
        form = self.pick(["plain", "concat", "unsqueeze"], p=[0.75, 0.15, 0.1])
        if form == "concat" and array.ndim == 3:
            H = array.shape[1] // 3
            parts = [self.constant(array[:, k * H:(k + 1) * H], stem) for k in range(3)]
            return self.op("Concat", parts, array.shape, axis=1)
        if form == "unsqueeze" and array.shape[0] == 1:
            return self.axes_op("Unsqueeze", self.constant(array[0], stem), [0], array.shape)
        if form == "plain":
            node = self.chance(0.2)  # drawn either way: the main stream stays as it was
            if self.quantized_layer and self.later.random() < 0.9:
                return self.dequantized(array, stem)
            return self.constant(array, stem, node=node)
        return self.constant(array, stem)

    def dequantized(self, array: np.ndarray, stem: str) -> str:
        """A weight stored as int8 (or uint8) values and scales, and a DequantizeLinear that
        makes it: symmetric with one scale, a scale per direction (axis 0) or per row (axis 1),
        which fastgru keeps in int8; or with a zero point or a scale per column, which it reads
        as the floats they make. Its choices draw from self.later."""
        later = self.later
        kinds = {"tensor": 3}  # how often each kind is drawn, relatively
        if self.opset >= 13:
            kinds.update(direction=2, row=3, zero=1, uint8=1, **({"column": 1} if array.ndim == 3
                                                                   else {}))
        odds = np.array(list(kinds.values()), float)
        kind = list(kinds)[int(later.choice(len(kinds), p=odds / odds.sum()))]
        axis = {"direction": 0, "row": 1, "zero": 1, "uint8": 1, "column": 2}.get(kind)
        if axis is None:
            scale = np.float32(np.abs(array).max() / 127 or 1.0)
            shape = ()
        else:
            others = tuple(k for k in range(array.ndim) if k != axis)
            scale = (np.abs(array).max(axis=others) / 127).astype(np.float32)
            scale[scale == 0] = 1.0
            shape = tuple(-1 if k == axis else 1 for k in range(array.ndim))
        low, high, dtype = (0, 255, np.uint8) if kind == "uint8" else (-128, 127, np.int8)
        zero = None
        if kind == "zero":
            zero = later.integers(-20, 21, np.shape(scale)).astype(np.int8)
        elif kind == "uint8":
            zero = np.full(np.shape(scale), 128, np.uint8)
        elif later.random() < 0.3:  # an explicit zero point of zeros: still symmetric
            zero = np.zeros(np.shape(scale), np.int8)
        shift = 0 if zero is None else zero.astype(np.float64).reshape(shape)
        values = np.clip(np.rint(array / scale.reshape(shape)) + shift, low, high).astype(dtype)
        inputs = [self.constant(values, stem + "q", node=False),
                  self.constant(scale, stem + "s", node=False)]
        if zero is not None:
            inputs.append(self.constant(zero, stem + "z", node=False))
        attrs = {} if axis is None else {"axis": axis}
        return self.op("DequantizeLinear", inputs, array.shape, **attrs)

    def gru(self, x: str, d: int, opts: dict, h0: tuple = ("", {}), lens: tuple = ("", "none"),
            weights: tuple | None = None) -> GruInfo:
        from onnx import helper

        dirs = 2 if opts["direction"] == "bidirectional" else 1
        H, k = opts["hidden"], len(self.grus)
        rng = self.rng
        if weights is not None:  # another node's
            w, r, b = weights
        else:
            self.quantized_layer = self.later.random() < 0.3  # its weights mostly int8 (QDQ)
            w = self.weight(0.5 * rng.standard_normal((dirs, 3 * H, d)), f"W{k}_")
            r = self.weight(0.5 * rng.standard_normal((dirs, 3 * H, H)), f"R{k}_")
            b = self.weight(0.5 * rng.standard_normal((dirs, 6 * H)), f"B{k}_") \
                if opts["bias"] else ""
            if not opts["bias"] and self.chance(0.3):
                b = self.constant(np.zeros((dirs, 6 * H), np.float32), f"B{k}_")
        attrs = {"hidden_size": H}
        if opts["direction"] != "forward" or self.chance(0.5):
            attrs["direction"] = opts["direction"]
        if opts["lbr"] or self.chance(0.5):
            attrs["linear_before_reset"] = opts["lbr"]
        if opts["clip"] is not None:
            attrs["clip"] = opts["clip"]
        if self.chance(0.1):
            attrs["activations"] = ["Sigmoid", "Tanh"] * dirs
        if self.opset >= 14 and self.chance(0.1):
            attrs["layout"] = 0
        inputs = [x, w, r, b, lens[0], h0[0]]
        while not inputs[-1]:
            inputs.pop()
        name = "" if self.chance(0.05) else f"gru{k}"  # node= cannot name an unnamed node
        y, y_h = self.name(f"Y{k}_"), self.name(f"Y_h{k}_")
        node = helper.make_node("GRU", inputs, [y, y_h], name=name, **attrs)
        self.nodes.append(node)
        T, B = (self.shapes.get(x) or (None, None))[:2]
        self.shapes[y], self.shapes[y_h] = (T, dirs, B, H), (dirs, B, H)
        self.types[y] = self.types[y_h] = FLOAT
        info = GruInfo(name, dirs, H, x, y, y_h, h0=h0[0], **h0[1], lens=lens[0],
                       lens_kind=lens[1], node=node)
        self.weights = (w, r, b)
        self.grus.append(info)
        return info

    # plumbing after a GRU
    def to_sequence(self, g: GruInfo) -> str:
        """Y (T, dirs, B, H) as (T, B, dirs*H), as exporters write it between stacked layers
        (exact at every size, except the fixed Reshape targets, exact at the nominal size)."""
        y, dirs, H = g.y, g.dirs, g.hidden
        T, _, B, _ = self.shapes[y]
        out = (T, B, dirs * H)
        forms = ["transpose_reshape", "dynamo", "fixed", "cast"]
        if dirs == 1:
            forms += ["squeeze", "squeeze", "reshape_0", "transpose_squeeze"]
        form = self.pick(forms)
        if form == "squeeze":
            v = self.axes_op("Squeeze", y, [self.pick([1, -3])], out)
        elif form == "reshape_0":
            v = self.op("Reshape", [y, self.ints([0, -1, H])], out)
        else:
            t = self.op("Transpose", [y], (T, B, dirs, H), perm=[0, 2, 1, 3])
            t = self.maybe_identity(t)
            if form == "transpose_squeeze":
                v = self.axes_op("Squeeze", t, [self.pick([2, -2])], out)
            elif form == "dynamo":  # the target computed at run time, as torch's dynamo writes
                rest = self.ints([self.pick([-1, dirs * H])])
                source = t
                if self.chance(0.3) and "X" in self.input_info and \
                        self.shapes["X"][:2] == (T, B):  # the same (T, B) from the graph input
                    source = "X"
                    self.notes.append("a Reshape target from the input's shape")
                if self.chance(0.25):  # the last size as dirs times H, computed
                    rest = self.op("Mul", [self.dims_of(t, 2, 3), self.dims_of(t, 3, 4)], (1,),
                                   INT64)
                target = self.op("Concat", [self.dims_of(source, 0, 2), rest], (3,), INT64,
                                 axis=0)
                v = self.op("Reshape", [t, target], out)
            elif form == "fixed":
                nt, nb = self.size(T) or -1, self.size(B) or -1
                target = self.pick([[nt, nb, dirs * H], [-1, nb, dirs * H], [nt, -1, dirs * H],
                                    [0, nb, -1]])
                v = self.op("Reshape", [t, self.ints(one_unknown(target))], out)
            else:
                target = self.pick([[0, 0, -1], [0, 0, dirs * H], [0, -1, dirs * H]])
                v = self.op("Reshape", [t, self.ints(target)], out)
                if form == "cast":
                    v = self.op("Cast", [v], out, to=FLOAT)
        if self.chance(0.1):  # a Slice that keeps everything
            v = self.slice(v, [0], [2**62], [0], shape=out)
        return self.maybe_identity(v)

    def odd_plumbing(self, g: GruInfo) -> tuple[str, int]:
        """Y turned into a valid next input that is not what a stacked layer reads."""
        y, dirs, H = g.y, g.dirs, g.hidden
        T, _, B, _ = self.shapes[y]
        forms = ["reverse_time", "swap_tb", "scale", "interleave", "time_major_swap"]
        if "X" in self.input_info and self.shapes["X"][:2] == (B, T):
            forms.append("input_target")
        if dirs == 2:
            forms.append("dirs_into_batch")
        forms += ["forward_only", "raw_reshape", "raw_reshape"] if dirs == 2 else \
            ["squeeze_all"] if H > 1 and (self.size(T) or 0) > 1 and (self.size(B) or 0) > 1 \
            else []
        form = self.pick(forms)
        if form == "forward_only":
            v = self.slice(y, [0], [1], [1], shape=(T, 1, B, H))
            return self.axes_op("Squeeze", v, [1], (T, B, H)), H
        if form == "raw_reshape":  # (T, 2, B, H) read as (T, B, 2H): rows and directions mixed
            target = self.pick([[0, -1, 2 * H], [self.size(T) or -1, self.size(B) or -1, 2 * H]])
            return self.op("Reshape", [y, self.ints(one_unknown(target))], (T, B, 2 * H)), 2 * H
        if form == "squeeze_all":  # every axis of size 1: also T or B when they are 1
            return self.axes_op("Squeeze", y, None, (T, B, H)), H
        if form == "dirs_into_batch":  # (T, dirs*B, H): each direction a row of its own
            batch = self.op("Mul", [self.dims_of(y, 1, 2), self.dims_of(y, 2, 3)], (1,), INT64)
            target = self.op("Concat", [self.dims_of(y, 0, 1), batch, self.ints([H])], (3,),
                             INT64, axis=0)
            return self.op("Reshape", [y, target], (T, None, H)), H
        if form == "input_target":  # a batch-first input's (B, T) as the target: rows mixed
            t = self.op("Transpose", [y], (T, B, dirs, H), perm=[0, 2, 1, 3])
            target = self.op("Concat", [self.dims_of("X", 0, 2), self.ints([-1])], (3,), INT64,
                             axis=0)
            return self.op("Reshape", [t, target], (B, T, dirs * H)), dirs * H
        if form == "interleave":  # (T, B, H, dirs): the directions interleaved unit by unit
            t = self.op("Transpose", [y], (T, B, H, dirs), perm=[0, 2, 3, 1])
            return self.op("Reshape", [t, self.ints([0, 0, -1])], (T, B, dirs * H)), dirs * H
        if form == "time_major_swap":  # (B, T, dirs, H) flattened: B read as time
            t = self.op("Transpose", [y], (B, T, dirs, H), perm=[2, 0, 1, 3])
            return self.op("Reshape", [t, self.ints([0, 0, -1])], (B, T, dirs * H)), dirs * H
        v = self.to_sequence(g)
        if form == "reverse_time":
            return self.slice(v, [-1], [INT64_MIN], [0], [-1], shape=(T, B, dirs * H)), dirs * H
        if form == "swap_tb":
            return self.op("Transpose", [v], (B, T, dirs * H), perm=[1, 0, 2]), dirs * H
        half = self.constant(np.array(0.5, np.float32), "half")
        return self.op("Mul", [v, half], (T, B, dirs * H)), dirs * H
