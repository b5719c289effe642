"""Differential fuzzing of fastgru's ONNX entry points, with onnxruntime as the oracle.

``run_case(seed)`` builds one random ONNX graph from the seed (``generate``) and checks every
entry point against onnxruntime running the same graph (``check``):

- ``InferenceSession(model)``: ``run(None, feeds)`` equals onnxruntime's run, every output, same
  shapes and dtypes, at every size tried; it never refuses a graph onnxruntime runs, and it
  refuses (ValueError, TypeError or onnxruntime's own error) every feed onnxruntime refuses.
- ``load(path)`` and ``GRU.from_onnx(model)``: either FormatError, or the model, called with the
  graph's X feed, an h0 made of the graph's initial_h inputs (per layer, concatenated) and lengths
  from its sequence_lens input, gives every graph output in one of the layouts ONNX or torch use
  (``compare.model_layouts``). A graph input that has no place in that call must make the
  loader refuse.
- ``GRU.from_onnx(model, node=N)`` for each GRU node: either FormatError, or the model, called
  with the node's X (and its initial_h / sequence_lens where they depend on the graph's inputs),
  gives the node's own Y and Y_h, read from onnxruntime by adding them as graph outputs. A
  constant initial_h must be kept as the model's stored state; a constant sequence_lens that
  changes the result must be refused.

Each is tried on the sizes the graph allows (its fixed dims and constants), at least two when
it allows them, T=1 among them. Tolerance: float32 against onnxruntime, |diff| <= 1e-5 +
1e-4 * |ref|. A crash, a hang (``CASE_SECONDS``), another exception type or a mismatch fails:
``run_case`` returns {entry point: "refused" | "matched"} or raises ``FuzzFailure`` (an
AssertionError) that lists every failure of the case, the seed and the graph as text.
``GeneratorError`` means this module made a graph onnxruntime cannot run (its own bug).

The generator (``generate``) combines 1-3 GRU nodes (stacks, encoder -> decoder with the state
passed, side by side) with what exporters write around them: Squeeze/Unsqueeze in both opset
forms, Transpose, Reshape with -1/0/fixed targets or a target computed from Shape/Gather/Concat,
Concat, Slice, Shape/Gather/ConstantOfShape zero states, Expand, Cast, Identity; front-ends
(MatMul, Conv1d), dense heads, several consumers of one value, states and lengths as graph
inputs or constants, dynamic and fixed dims, value_info on intermediates, opsets 11-21; and
weights stored in int8 or uint8 behind DequantizeLinear (QDQ), symmetric or not, per tensor,
direction, row or column (drawn from a stream of their own, so every seed still makes the graph
it made before they were added). An int8 model read from such a graph is compared on its
widened path: the float network of its dequantized weights, as onnxruntime computes it.

The modules, each used by the ones after it: ``case`` (constants, exceptions, what a case
records), ``graph`` / ``sources`` / ``layers`` / ``outputs`` (the graph builder, layer by layer
of concern), ``generate``, ``feeds``, ``compare``, ``reference`` (onnxruntime, the oracle),
``check_session`` / ``check_models`` (the entry points' checks), ``describe``, ``check``
(``check``, ``run_case``) and ``shrink``.
"""

from __future__ import annotations

from fastgru.testing.limits import CaseTimeout

from .case import (ATOL, BAD_FEED, CASE_SECONDS, DOUBLE, ENTRY_POINTS, FLOAT, INT32, INT64,
                   INT64_MIN, OPSETS, RTOL, SESSION, Case, FuzzFailure,
                   GeneratorError, GruInfo, InputInfo, entry_kind)
from .check import check, run_case
from .compare import compare
from .describe import describe, graph_text
from .feeds import make_feeds, session_feeds
from .generate import generate
from .shrink import shrink

__all__ = ["ATOL", "BAD_FEED", "CASE_SECONDS", "DOUBLE", "ENTRY_POINTS", "FLOAT", "INT32",
           "INT64", "INT64_MIN", "OPSETS", "RTOL", "SESSION", "Case", "CaseTimeout",
           "FuzzFailure", "GeneratorError", "GruInfo", "InputInfo", "check", "compare",
           "describe", "entry_kind", "generate", "graph_text", "make_feeds", "run_case",
           "session_feeds", "shrink"]
