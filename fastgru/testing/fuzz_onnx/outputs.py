"""The generated graph's outputs: a GRU's results in the layouts exporters and users write,
dense heads, and values no loader can return."""

from __future__ import annotations

import numpy as np

from .case import FLOAT, GruInfo
from .layers import Layers


class Builder(Layers):
    """An ONNX graph under construction, with the symbolic shape of every value."""

    def head(self, v: str) -> str:
        """A dense head on (..., n): MatMul, maybe Add and Sigmoid."""
        shape = self.shapes[v]
        n = shape[-1]
        k = int(self.rng.integers(1, 5))
        w = self.constant((0.5 * self.rng.standard_normal((n, k))).astype(np.float32), "Wh")
        out = self.op("MatMul", [v, w], (*shape[:-1], k))
        if self.chance(0.6):
            bias = self.constant(self.rng.standard_normal(k).astype(np.float32), "bh")
            out = self.op("Add", [out, bias], (*shape[:-1], k))
        if self.chance(0.3):
            out = self.op("Sigmoid", [out], (*shape[:-1], k))
        return out

    def output_value(self, kind: str, g: GruInfo, layers: list) -> str | None:
        T, dirs, B, H = self.shapes[g.y]
        if kind == "Y":
            return g.y
        if kind == "Y_h":
            return g.y_h
        if kind == "y":
            return self.to_sequence(g)
        if kind == "y_bf":
            return self.op("Transpose", [self.to_sequence(g)], (B, T, dirs * H), perm=[1, 0, 2])
        if kind == "Y_layout1":
            return self.op("Transpose", [g.y], (B, T, dirs, H), perm=[2, 0, 1, 3])
        if kind == "Y_h_bf":
            return self.op("Transpose", [g.y_h], (B, dirs, H), perm=[1, 0, 2])
        if kind == "h_n" and len(layers) > 1 and len({self.shapes[x.y_h] for x in layers}) == 1:
            return self.op("Concat", [x.y_h for x in layers], (len(layers) * dirs, B, H), axis=0)
        if kind == "head_y":
            return self.head(self.to_sequence(g))
        if kind == "head_h":
            t = self.op("Transpose", [g.y_h], (B, dirs, H), perm=[1, 0, 2])
            return self.head(self.op("Reshape", [t, self.ints([0, -1])], (B, dirs * H)))
        if kind == "lower" and len(layers) > 1:
            low = layers[int(self.rng.integers(0, len(layers) - 1))]
            return self.pick([low.y, low.y_h])
        if kind == "const":
            return self.constant(self.rng.standard_normal(2).astype(np.float32), "const_out",
                                 node=False)
        if kind == "last_step":  # Y[-1]: Y_h for a forward GRU of full-length rows only
            last = self.slice(g.y, [-1], [2**62], [0], shape=(1, dirs, B, H))
            return self.axes_op("Squeeze", last, [0], (dirs, B, H))
        if kind == "Y_h_flat":  # (dirs*B, H)
            return self.op("Reshape", [g.y_h, self.ints([-1, H])], (None, H))
        if kind == "Y_flat" and dirs == 2:  # (T, dirs, B*H): directions not moved
            return self.op("Reshape", [g.y, self.ints([0, 0, -1])], (T, dirs, None))
        if kind == "input" and "X" in self.input_info:  # the graph input itself
            return "X"
        if kind == "h_n_reversed" and len(layers) > 1 and \
                len({self.shapes[x.y_h] for x in layers}) == 1:  # top layer first
            return self.op("Concat", [x.y_h for x in layers[::-1]], (len(layers) * dirs, B, H),
                           axis=0)
        if kind == "Y_h_unsqueezed":  # (1, dirs, B, H): h_n.view of a 1-layer model only
            return self.axes_op("Unsqueeze", g.y_h, [0], (1, dirs, B, H))
        if kind == "Y_odd_perm":  # (dirs, T, B, H): no layout anyone uses
            return self.op("Transpose", [g.y], (dirs, T, B, H), perm=[1, 0, 2, 3])
        if kind == "Y_h_squeezed" and dirs == 1:
            return self.axes_op("Squeeze", g.y_h, [self.pick([0, -3])], (B, H))
        if kind == "one_direction" and dirs == 2:
            k = int(self.rng.integers(0, 2))
            if self.chance(0.5):
                return self.slice(g.y_h, [k], [k + 1], [0], shape=(1, B, H))
            return self.op("Gather", [g.y_h, self.ints([k])], (1, B, H), axis=0)
        return None

    def add_outputs(self, g: GruInfo, layers: list, count: int | None = None,
                    clean: bool = False) -> None:
        from onnx import helper

        kinds = ["Y", "Y_h", "y", "y_bf", "Y_layout1", "Y_h_bf", "Y_h_squeezed", "h_n",
                 "head_y", "head_h", "lower", "const", "last_step", "Y_h_flat", "Y_flat",
                 "input", "h_n_reversed", "one_direction", "Y_h_unsqueezed", "Y_odd_perm"]
        odd = not clean
        p = np.array([10, 8, 10, 4, 3, 3, 3, 5, 5 * odd, 3 * odd, 2 * odd, 1 * odd, 2 * odd,
                      1 * odd, 1 * odd, 3 * odd, 2, 1.5, 1.5, 1], float)
        count = count or int(self.pick([1, 2, 3], p=[0.45, 0.4, 0.15]))
        done = {o.name for o in self.outputs}
        for _ in range(count):
            value = self.output_value(self.pick(kinds, p=p / p.sum()), g, layers)
            if value is None or value in done:
                continue
            done.add(value)
            shape = self.shapes.get(value)
            form = self.pick(["none", "symbolic", "fixed"], p=[0.3, 0.5, 0.2])
            if shape is None or form == "none":
                dims = None
            elif form == "symbolic":
                dims = [d if isinstance(d, (int, str)) else None for d in shape]
            else:
                dims = [self.size(d) if d is not None else None for d in shape]
            self.outputs.append(helper.make_tensor_value_info(value, self.types.get(value, FLOAT),
                                                              dims))
