"""What a fuzz case is: the constants and exceptions of the ONNX fuzzer, and what the
generator records of a graph (its GRU nodes, its inputs, the sizes to try)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ATOL, RTOL = 1e-5, 1e-4  # float32 against onnxruntime (fastgru.testing.asserts.TOLERANCE)
CASE_SECONDS = 60.0  # a case takes well under a second; past this it is a hang
OPSETS = (11, 21)  # the opsets generated, both included
FLOAT, INT32, INT64, DOUBLE = 1, 6, 7, 11  # onnx.TensorProto element types
INT64_MIN = int(np.iinfo(np.int64).min)
SESSION = "InferenceSession"
BAD_FEED = "InferenceSession(bad feed)"  # "refused": a feed onnxruntime refuses, refused too
ENTRY_POINTS = (SESSION, BAD_FEED, "load", "from_onnx", "from_onnx(node=)")


class GeneratorError(Exception):
    """The generated graph is one onnxruntime cannot run: a bug of this module, not fastgru's."""


class FuzzFailure(AssertionError):
    """One case's failures: .seed, .failures [(entry point, category, detail)], .model."""

    def __init__(self, message: str, seed: int, failures: list, model) -> None:
        super().__init__(message)
        self.seed, self.failures, self.model = seed, failures, model

    def keys(self) -> list[str]:
        """'entry point: category' of each failure, node names left out: what tells distinct
        failures apart across cases."""
        return sorted({f"{entry_kind(e)}: {c}" for e, c, _ in self.failures})


def entry_kind(entry: str) -> str:
    return "from_onnx(node=)" if entry.startswith("from_onnx(node=") else entry


# ---- what the generator records -----------------------------------------------------------------


@dataclass
class GruInfo:
    """One generated GRU node and where its inputs come from."""

    name: str
    dirs: int
    hidden: int
    x: str  # the value its X reads
    y: str
    y_h: str
    h0: str = ""  # the value its initial_h reads ("" when absent)
    # none | zeros (any zeros: constant or shaped at run time) | const (a constant of batch b)
    # | stored (a constant (dirs, 1, H) expanded over the batch) | input | combined | gru
    h0_kind: str = "none"
    h0_input: str = ""  # the graph input it comes from (input, combined)
    h0_value: np.ndarray | None = None  # const and stored
    h0_slice: int = -1  # combined: the layer's part of the graph's state it reads
    lens: str = ""  # the value its sequence_lens reads
    lens_kind: str = "none"  # none | input | const
    node: object = None  # its NodeProto while the graph is built


@dataclass
class InputInfo:
    role: str  # "x" | "state" | "lens"
    shape: tuple  # ints and size symbols ("T", "T2", "B")
    dtype: str
    default: np.ndarray | None = None  # an initializer of the same name: feeding it is optional
    layout: str = ""  # "batch-first" for a state (B, dirs, H) the graph transposes


@dataclass
class Case:
    seed: int
    model: object  # onnx.ModelProto
    grus: list  # [GruInfo] in graph order
    inputs: dict  # graph input name -> InputInfo
    x_main: str | None  # the graph input the first GRU reads, or None
    x_const: np.ndarray | None  # that X when it is an initializer
    combined: str | None  # one state input sliced per layer (torch's h0), or None
    sizes: list  # [{symbol: size}] to try
    summary: str = ""
    fixed: dict = field(default_factory=dict)  # symbol -> the only size the graph runs with
    least: dict = field(default_factory=dict)  # symbol -> the least size it runs with


def resolve(shape: tuple, size: dict) -> tuple:
    """A shape of ints and size symbols at `size`."""
    return tuple(size[d] if isinstance(d, str) else d for d in shape)
