"""The checks of the model loaders: load and GRU.from_onnx on the whole graph, and
GRU.from_onnx(node=) against each GRU node's own outputs."""

from __future__ import annotations

import traceback

import numpy as np

from .case import FLOAT, INT32
from .compare import compare, model_layouts, shape_text
from .reference import Reference, ort_session


def widened(model):
    """The model, or for an int8 model (weights that came quantized) the same int8 weights on
    the widened path: the float network of its dequantized weights, which onnxruntime computes
    to float32 rounding (the vnni path also quantizes the activations, by design)."""
    import fastgru

    if model.precision != "int8":
        return model
    return fastgru.GRU(model.spec, batch_first=model.batch_first, dtype="int8",
                       kernel_path="widen")


class ModelCheck(Reference):
    # load and from_onnx without node=
    def model_call(self, feeds: dict, size: dict):
        """(x, h0, lengths, unused graph inputs) for a whole-graph model, or raise ValueError
        when the graph's states cannot make one h0."""
        case = self.case
        x = feeds[case.x_main] if case.x_main in feeds else case.x_const
        used = {case.x_main}
        h0 = None
        if case.combined:
            h0 = feeds[case.combined]
            used.add(case.combined)
        elif any(g.h0_kind == "input" for g in case.grus):
            parts = []
            for g in case.grus:
                B = size["B"]
                if g.h0_kind == "input":
                    info = case.inputs[g.h0_input]
                    part = feeds.get(g.h0_input, info.default)
                    parts.append(np.swapaxes(part, 0, 1) if info.layout else part)
                    used.add(g.h0_input)
                elif g.h0_kind in ("const", "stored"):
                    parts.append(np.broadcast_to(g.h0_value, (g.dirs, B, g.hidden)))
                else:
                    parts.append(np.zeros((g.dirs, B, g.hidden), np.float32))
            if len({p.shape[1:] for p in parts}) > 1:
                raise ValueError(f"the graph feeds states of shapes {[p.shape for p in parts]} "
                                 f"to its GRUs: no one h0 holds them")
            h0 = np.concatenate(parts)
        lengths = None
        if any(g.lens_kind == "input" for g in case.grus):
            name = next(n for n, i in case.inputs.items() if i.role == "lens")
            lengths = feeds[name]
            used.add(name)
        return x, h0, lengths, sorted(set(feeds) - used)

    def check_whole(self, entry: str, read) -> None:
        import fastgru

        self.entry = entry
        try:
            m = widened(read())
        except fastgru.FormatError:
            self.outcomes[entry] = "refused"
            return
        except Exception:
            self.fail("raised another exception than FormatError",
                      traceback.format_exc(limit=-4))
            return
        names = [n for n, _ in self.ort_outputs]
        for label, size, feeds, expected in self.valid:
            try:
                x, h0, lengths, unused = self.model_call(feeds, size)
            except ValueError as error:
                self.fail("accepted a graph whose states no h0 holds", str(error))
                return
            if unused:
                self.fail("accepted a graph with inputs the model cannot take",
                          f"graph inputs {unused} have no place in m(x, h0, lengths=); {m!r}")
                return
            try:
                y, h_n = m(x, h0, lengths=lengths)
            except Exception as error:
                self.fail("accepted, but the model cannot be called with the graph's inputs",
                          f"feed {label}: m(x {shape_text(x)}, h0 "
                          f"{None if h0 is None else shape_text(h0)}, lengths {lengths}) raised "
                          f"{error!r}; {m!r}")
                return
            layouts = model_layouts(y, h_n, m)
            for name, e in zip(names, expected, strict=False):
                scores = [(compare(a, e)[1], what) for what, a in layouts.items()
                          if np.shape(a) == e.shape]
                if not any(compare(layouts[what], e)[0] for _, what in scores):
                    closest = min(scores, default=None)
                    self.fail("a graph output matches none of the model's results",
                              f"feed {label}: output {name!r} {e.shape}: "
                              + (f"closest {closest[1]}, max |diff| {closest[0]:.3g}"
                                 if closest else "no result of that shape")
                              + f"; model {m!r}, called with h0 "
                                f"{'None' if h0 is None else shape_text(h0)}, lengths {lengths}")
                    return
        self.outcomes[entry] = "matched"

    # from_onnx(node=)
    def check_nodes(self) -> None:
        import fastgru
        from onnx import helper, numpy_helper

        case = self.case
        probe = self.copy()
        inputs = {i.name for i in probe.graph.input}
        inits = {t.name: t for t in probe.graph.initializer}
        wanted = []
        nodes = [n for n in probe.graph.node if n.op_type == "GRU"]
        assert len(nodes) == len(case.grus), "the generator lost track of its GRU nodes"
        for k, (node, g) in enumerate(zip(nodes, case.grus, strict=True)):
            while len(node.output) < 2:
                node.output.append("")
            for j, stem in ((0, "Y"), (1, "Y_h")):
                if not node.output[j]:
                    node.output[j] = f"gru_{k}__{stem}"
            g.y, g.y_h = node.output[0], node.output[1]
            for name in (g.x, g.h0, g.lens, g.y, g.y_h):
                if name and name not in inputs and name not in inits and name not in wanted:
                    wanted.append(name)
        known = {t.name: numpy_helper.to_array(t) for t in inits.values()}
        for name in wanted:
            elem = INT32 if any(name == g.lens for g in case.grus) else FLOAT
            probe.graph.output.append(helper.make_tensor_value_info(name, elem, None))
        session = ort_session(probe.SerializeToString())
        values = []
        for label, _, feeds, _ in self.valid:
            result = session.run(wanted, feeds)
            values.append((label, {**known, **feeds, **dict(zip(wanted, result, strict=False))}))
        for g in case.grus:
            if not g.name:
                continue  # an unnamed node: node= cannot pick it
            self.entry = f"from_onnx(node={g.name})"
            try:
                m = widened(fastgru.GRU.from_onnx(self.copy(), node=g.name))
            except fastgru.FormatError:
                self.outcomes[self.entry] = "refused"
                continue
            except Exception:
                self.fail("raised another exception than FormatError",
                          traceback.format_exc(limit=-4))
                continue
            for label, v in values:
                h0 = v[g.h0] if g.h0_kind in ("input", "combined", "gru") else None
                lengths = v[g.lens] if g.lens_kind == "input" else None
                try:
                    y, h_n = m(v[g.x], h0, lengths=lengths)
                except Exception as error:
                    self.fail("the node's model cannot be called with the node's inputs",
                              f"feed {label}: {error!r}; {m!r}")
                    break
                layouts = model_layouts(y, h_n, m)
                Y, Y_h = layouts["Y (T, dirs, B, H)"], h_n
                for what, a, e in (("Y", Y, v[g.y]), ("Y_h", Y_h, v[g.y_h])):
                    ok, err = compare(a, e)
                    if not ok:
                        how = "without h0" if h0 is None else "with the node's initial_h"
                        how += ", without lengths" if lengths is None else \
                            ", with the node's sequence_lens"
                        stored = "stored" if m.initial_state is not None else "none"
                        self.fail(f"the node's {what} differs from the model's",
                                  f"feed {label}: {what} {e.shape} vs {shape_text(a)}: max |diff| "
                                  f"{err:.3g}; called {how}; the node's initial_h is "
                                  f"{g.h0_kind}, sequence_lens {g.lens_kind}; the model's "
                                  f"initial_state: {stored}; {m!r}")
                        break
                else:
                    continue
                break
            if not self.failed(self.entry):
                self.outcomes[self.entry] = "matched"
