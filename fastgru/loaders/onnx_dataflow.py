"""What the nodes around GRU layers do, proved from the graph's dataflow with sizes as symbols.

A chain of GRU nodes is read as one stacked model only when every node between the graph's
input, the layers and the graph's outputs provably moves data as the stack does, for every
sequence length and batch size the graph accepts. A trial run at one size cannot prove that (a
Reshape to a fixed shape works at one length only), so the proof is symbolic:

- a tensor derived from a source (a graph input, a GRU's Y or Y_h) is a list of dims, each dim
  a run of the source's axes ("atoms") in row-major order;
- a size is a monomial: an integer times symbols, one symbol per size the graph leaves open
  (a dim_param or an unknown dim stays a symbol; a fixed dim is a number);
- a Reshape regroups atoms only where each target size is provably the product of a run of
  them; a number never equals a symbol, so a fixed target is valid only where the graph fixes
  that size too;
- shape tensors (Shape, Gather, Slice, Concat, Mul... of sizes) are lists of sizes, so the
  targets torch's default exporter computes at run time are known symbolically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastgru.loaders.onnx_moves import evaluate
from fastgru.loaders.onnx_symbols import Shape, Size, Tensor

MAX_DEPTH = 200  # nodes followed back from one value: deeper chains are refused, never a crash


@dataclass
class Dataflow:
    """Traces values back to sources through the moves of onnx_moves.

    producers: {value name: node}; constant(name) -> ndarray or None (folded constants);
    attributes(node) -> {name: value}; opset: the graph's default-domain opset.
    `visited` collects the nodes every successful trace went through.
    """

    producers: dict
    constant: object
    attributes: object
    opset: int
    visited: set = field(default_factory=set)

    def trace(self, name: str, sources: dict) -> "Tensor | Shape | None":
        """What `name` is in terms of `sources` ({name: Tensor}), or None when unknown."""
        return self._value(name, sources, {}, 0)

    def _value(self, name, sources, memo, depth):
        if name in sources:
            return sources[name]
        if name in memo:
            return memo[name]
        memo[name] = None  # a cycle reads as unknown
        result = None
        array = self.constant(name)
        if array is not None:
            if array.dtype.kind in "iu" and array.ndim <= 1 and array.size <= 64:
                result = Shape(tuple(Size(int(v)) for v in array.reshape(-1)), array.ndim == 0)
        else:
            node = self.producers.get(name)
            if node is not None and depth < MAX_DEPTH and node.domain in ("", "ai.onnx") and \
                    list(node.output).index(name) == 0:
                value = lambda n: self._value(n, sources, memo, depth + 1)  # noqa: E731
                try:
                    result = evaluate(self, node, value)
                except Exception:  # malformed attributes or inputs: unknown, never a crash
                    result = None
                if result is not None:
                    self.visited.add(id(node))
        memo[name] = result
        return result

    def ints(self, name: str) -> list[int] | None:
        """A constant integer input (axes, starts...) as a list, or None."""
        if not name:
            return None
        array = self.constant(name)
        if array is None or array.dtype.kind not in "iu":
            return None
        return [int(v) for v in array.reshape(-1)]

