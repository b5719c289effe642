"""A failing case as text: its seed, sizes, failures and graph."""

from __future__ import annotations

import numpy as np

from .case import Case


def graph_text(model) -> str:
    """The graph in ONNX's text syntax; initializers of more than 16 values are listed as
    inputs (their values are in the model file)."""
    import onnx
    from onnx import helper

    shown = onnx.ModelProto()
    shown.CopyFrom(model)
    big = [t for t in shown.graph.initializer if int(np.prod(t.dims)) > 16]
    for t in big:
        shown.graph.initializer.remove(t)
        shown.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    text = onnx.printer.to_text(shown)
    if big:
        text += f"\n(initializers shown as inputs: {[t.name for t in big]})"
    return text


def describe(case: Case, failures: list) -> str:
    lines = [f"fuzz_onnx seed {case.seed}: {case.summary}",
             "sizes tried: " + "; ".join(", ".join(f"{k}={v}" for k, v in s.items())
                                         for s in case.sizes), ""]
    for entry, category, detail in failures:
        lines.append(f"[{entry}] {category}")
        lines.extend("    " + line for line in detail.strip().splitlines())
    lines += ["", graph_text(case.model)]
    return "\n".join(lines)
