"""What the generated GRUs read: the sequence input, what a network computes in front of
the GRU, initial states and sequence lengths."""

from __future__ import annotations

import numpy as np

from .case import DOUBLE, FLOAT, INT32, INT64, INT64_MIN, resolve
from .graph import Graph, one_unknown


class Sources(Graph):
    def sequence_input(self, name: str, tsym: str, d: int) -> str:
        """A graph input read as the sequence (T, B, d): time-major, or batch-first and
        transposed; float32, or float64 and cast."""
        batch_first, f64 = self.chance(0.3), self.chance(0.1)
        self.declare(name, DOUBLE if f64 else FLOAT, ("B", tsym, d) if batch_first else
                     (tsym, "B", d), "x")
        x = name
        if f64:
            x = self.op("Cast", [x], self.shapes[name], to=FLOAT)
        elif self.chance(0.05):
            x = self.op("Cast", [x], self.shapes[name], to=FLOAT)  # a no-op cast
        if batch_first:
            x = self.op("Transpose", [x], (tsym, "B", d), perm=[1, 0, 2])
        return self.maybe_identity(x)

    def front_end(self, x: str, d: int) -> tuple[str, int]:
        """Nothing, or what a network computes before its GRU: MatMul (+Add, Tanh), Conv1d
        (Transpose, Conv, Transpose, Relu), Relu."""
        kind = self.pick(["none", "matmul", "conv", "relu", "features", "reverse", "twice",
                          "reshape", "half"], p=[0.46, 0.18, 0.1, 0.04, 0.05, 0.05, 0.04, 0.05,
                                                 0.03])
        T, B, _ = self.shapes[x]
        if kind == "none":
            return x, d
        if kind == "relu":
            return self.op("Relu", [x], (T, B, d)), d
        if kind == "features" and d > 1:  # some of the features only
            k = int(self.rng.integers(1, d))
            start = self.pick([0, d - k])
            return self.slice(x, [start], [start + k], [self.pick([2, -1])], shape=(T, B, k)), k
        if kind == "reshape":  # exact, or with a fixed size (exact at the nominal sizes)
            target = self.pick([[0, 0, -1], [0, -1, d], [-1, self.size(B) or -1, d],
                                [self.size(T) or -1, -1, d]])
            return self.op("Reshape", [x, self.ints(one_unknown(target))], (T, B, d)), d
        if kind == "half":  # through float16 and back: not a move, it rounds
            h = self.op("Cast", [x], (T, B, d), 10, to=10)
            return self.op("Cast", [h], (T, B, d), to=FLOAT), d
        if kind == "reverse":  # the steps in reverse order
            return self.slice(x, [-1], [INT64_MIN], [0], [-1], shape=(T, B, d)), d
        if kind == "twice":  # two transposes that cancel
            t = self.op("Transpose", [x], (B, T, d), perm=[1, 0, 2])
            return self.op("Transpose", [t], (T, B, d), perm=[1, 0, 2]), d
        d2 = int(self.rng.integers(1, 9))
        if kind == "matmul":
            w = self.constant((0.5 * self.rng.standard_normal((d, d2))).astype(np.float32), "Wf")
            x = self.op("MatMul", [x, w], (T, B, d2))
            if self.chance(0.5):
                bias = self.constant(self.rng.standard_normal(d2).astype(np.float32), "bf")
                x = self.op("Add", [x, bias], (T, B, d2))
            if self.chance(0.3):
                x = self.op("Tanh", [x], (T, B, d2))
            return x, d2
        k = self.pick([1, 3])
        w = self.constant((0.4 * self.rng.standard_normal((d2, d, k))).astype(np.float32), "Wc")
        bias = self.constant((0.1 * self.rng.standard_normal(d2)).astype(np.float32), "bc")
        x = self.op("Transpose", [x], (B, d, T), perm=[1, 2, 0])
        x = self.op("Conv", [x, w, bias], (B, d2, T), kernel_shape=[k], pads=[k // 2, k // 2])
        if self.chance(0.5):
            x = self.op("Relu", [x], (B, d2, T))
        return self.op("Transpose", [x], (T, B, d2), perm=[2, 0, 1]), d2

    # states and lengths
    def initial_state(self, kind: str, x: str, dirs: int, hidden: int,
                      combined: str | None = None, layer: int = 0) -> tuple[str, dict]:
        """The value a GRU's initial_h reads, and what GruInfo records of it."""
        from onnx import helper

        batch = (self.shapes.get(x) or (None, None))[1]
        if kind in ("const", "zeros_const", "input") and batch is None or \
                kind == "combined" and batch != "B":
            kind = "zeros_shape"  # a batch size unknown here: shaped at run time instead
        if kind == "none":
            return "", {}
        if kind in ("zeros_shape", "zeros_expand", "stored"):
            b = self.dims_of(x, 1, 2)
            target = self.op("Concat", [self.ints([dirs]), b, self.ints([hidden])], (3,), INT64,
                             axis=0)
            if kind == "zeros_shape":
                zero = helper.make_tensor("value", FLOAT, [1], [0.0])
                h0 = self.op("ConstantOfShape", [target], (dirs, batch, hidden), value=zero)
                return self.maybe_identity(h0), {"h0_kind": "zeros"}
            fill = np.zeros((dirs, 1, hidden), np.float32) if kind == "zeros_expand" else \
                (0.8 * self.rng.standard_normal((dirs, 1, hidden))).astype(np.float32)
            h0 = self.op("Expand", [self.constant(fill, "h0c"), target], (dirs, batch, hidden))
            return h0, {"h0_kind": "zeros" if kind == "zeros_expand" else "stored",
                        "h0_value": fill}
        if kind in ("const", "zeros_const"):
            self.fix(batch)
            b = self.size(batch)
            if kind == "zeros_const":
                value = np.zeros((dirs, b, hidden), np.float32)
            elif self.chance(0.3):  # the same state for every row
                value = np.repeat(0.8 * self.rng.standard_normal((dirs, 1, hidden)), b, axis=1)
            else:
                value = 0.8 * self.rng.standard_normal((dirs, b, hidden))
            value = value.astype(np.float32)
            return self.maybe_identity(self.constant(value, "h0c")), {
                "h0_kind": "zeros" if kind == "zeros_const" else "const", "h0_value": value}
        if kind == "input":
            name = self.name("h0_in")
            batch_first = self.chance(0.15)
            shape = (batch, dirs, hidden) if batch_first else (dirs, batch, hidden)
            self.declare(name, FLOAT, shape, "state")
            if self.chance(0.04) and isinstance(self.size(batch), int):  # a default value
                default = (0.5 * self.rng.standard_normal(resolve(shape, self.nominal))
                           ).astype(np.float32)
                self.input_info[name].default = default
                self.constant(default, "unused", node=False)
                self.inits[-1].name = name
                self.fix(batch)
            h0 = name
            if batch_first:
                self.input_info[name].layout = "batch-first"
                h0 = self.op("Transpose", [name], (dirs, batch, hidden), perm=[1, 0, 2])
            return self.maybe_identity(h0), {"h0_kind": "input", "h0_input": name}
        assert kind == "combined" and combined is not None
        if self.chance(0.1):  # the slices of another layer
            layer = self.combined_layers - 1 - layer
            self.notes.append("state slices swapped")
        shift = -self.combined_layers * dirs if self.chance(0.3) else 0  # negative indices
        if dirs == 1 and self.chance(0.3):
            h0 = self.op("Gather", [combined, self.ints([layer + shift])], (1, batch, hidden),
                         axis=0)
        else:
            end = (layer + 1) * dirs + shift
            h0 = self.slice(combined, [layer * dirs + shift], [end if end else 2**62], [0],
                            shape=(dirs, batch, hidden))
        return h0, {"h0_kind": "combined", "h0_input": combined, "h0_slice": layer}

    def lengths(self, kind: str, x: str) -> tuple[str, str]:
        """The value a GRU's sequence_lens reads (one per graph, shared; "input2": a second
        graph input), and its kind."""
        shape = self.shapes.get(x) or (None, None)
        if kind == "none" or shape[0] != "T" or shape[1] != "B":
            return "", "none"  # only the main sequence (T, B) has lengths here
        if kind == "input2":
            if "sequence_lens2" not in self.input_info:
                self.declare("sequence_lens2", INT32, ("B",), "lens")
            return self.maybe_identity("sequence_lens2"), "input"
        if self.lens_value is None:
            if kind == "input":
                wide = self.chance(0.4)  # torch exports int64 lengths, cast to int32
                self.declare("sequence_lens", INT64 if wide else INT32, ("B",), "lens")
                value = "sequence_lens"
                if wide:
                    value = self.op("Cast", [value], ("B",), INT32, to=INT32)
            else:
                self.fix("B")
                T = self.nominal["T"]
                values = self.rng.integers(1, T + 1, self.nominal["B"])
                self.least["T"] = max(self.least.get("T", 1), int(values.max()))
                value = self.constant(values.astype(np.int32), "lens")
            self.lens_value = (self.maybe_identity(value), kind)
        return self.lens_value
