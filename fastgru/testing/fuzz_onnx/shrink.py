"""Shrinking a failing case: graph outputs dropped one at a time while it still fails the
same way."""

from __future__ import annotations

from dataclasses import replace

from .case import Case, FuzzFailure, GeneratorError, entry_kind
from .check import check
from .graph import needed_nodes


def _with_outputs(case: Case, keep: list) -> Case:
    """`case` with only the graph outputs `keep`, and what they need."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    graph = model.graph
    outputs = [o for o in graph.output if o.name in keep]
    all_nodes = list(graph.node)
    nodes, needed = needed_nodes(all_nodes, [o.name for o in outputs])
    new = helper.make_graph(nodes, graph.name, [i for i in graph.input if i.name in needed],
                            outputs, [t for t in graph.initializer if t.name in needed],
                            value_info=[v for v in graph.value_info if v.name in needed])
    model.graph.CopyFrom(new)
    kept = {id(n) for n in nodes}
    grus = [replace(g) for g, n in zip(case.grus, [n for n in all_nodes if n.op_type == "GRU"],
                                       strict=False) if id(n) in kept]
    inputs = {n: i for n, i in case.inputs.items() if n in needed}
    return replace(case, model=model, grus=grus,
                   inputs=inputs, x_main=case.x_main if case.x_main in inputs else None,
                   combined=case.combined if case.combined in inputs else None)


def shrink(case: Case, key: str | None = None) -> Case:
    """A smaller case that still fails with `key` ('entry point: category', by default the
    first failure's): graph outputs are dropped one at a time, with what only they need."""
    def failing(c: Case) -> bool:
        try:
            check(replace(c, grus=[replace(g) for g in c.grus]))
        except FuzzFailure as failure:
            return key in failure.keys()
        except GeneratorError:
            return False
        return False

    if key is None:
        try:
            check(replace(case, grus=[replace(g) for g in case.grus]))
            return case
        except FuzzFailure as failure:
            key = f"{entry_kind(failure.failures[0][0])}: {failure.failures[0][1]}"
    changed = True
    while changed:
        changed = False
        names = [o.name for o in case.model.graph.output]
        for name in names if len(names) > 1 else []:
            smaller = _with_outputs(case, [n for n in names if n != name])
            if failing(smaller):
                case, changed = smaller, True
                break
    return case
