"""What fastgru's results are compared with, and how close they must be: `fastgru check` judges
a model file with these, and the benchmark reports its agreement column with them.

The references: onnxruntime (the user's own ONNX file, or the graph fastgru writes for the
weights it read) and PyTorch (an nn.GRU built from the weights read, which undoes the loader's
gate reordering, so a misread file shows as a difference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# |fastgru - reference| <= atol + rtol * |reference|, by the model's precision; the references
# compute in float32.
# bfloat16: weights rounded to 8 significant bits (2**-9, about 2e-3, of relative error each)
# make a slightly different network. fastgru-bf16 differs from float32 by 1.4e-3 to 3.7e-3 on
# the benchmark shapes and on trained networks over 1,000-3,000 steps (docs/bfloat16.md); random
# networks with saturated gates reach 1e-2. The bound is ten roundings: a misread file is off
# by tenths.
# int8: weights rounded to 255 levels per row, and on the vnni path the activations to 256
# levels per row and step; fastgru-int8 differs from the float network by 3.4e-3 to 1.2e-2 on
# the benchmark shapes and on random and trained networks (docs/int8.md). The bound is about
# four times the largest of those: a misread file is off by tenths.
TOLERANCES = {"float32": (1e-5, 1e-4), "float64": (1e-5, 1e-4), "bfloat16": (2e-2, 2e-2),
              "int8": (5e-2, 5e-2)}


def tolerance(precision: str) -> tuple[float, float]:
    """(atol, rtol) for a model of this precision ("float32", "float64", "bfloat16", "int8")."""
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise ValueError(f"no tolerance is set for {precision!r} models; known: "
                         f"{sorted(TOLERANCES)}") from None


def describe_tolerance(precision: str) -> str:
    atol, rtol = tolerance(precision)
    return f"{atol} + {rtol}*|ref|" + ("" if precision in ("float32", "float64") else
                                       f", {precision}'s")


@dataclass(frozen=True)
class Agreement:
    """How far fastgru's output is from a reference: the largest |difference|, and the largest
    amount by which any element exceeds the tolerance (<= 0 within it)."""

    max_abs_diff: float
    excess: float

    @property
    def ok(self) -> bool:
        return self.excess <= 0


def compare(ours, reference, precision: str) -> Agreement:
    """fastgru's output against a reference of the same shape, at `precision`'s tolerance."""
    atol, rtol = tolerance(precision)
    ref = np.asarray(reference, np.float64)
    err = np.abs(np.asarray(ours, np.float64) - ref)
    if not err.size:
        return Agreement(0.0, 0.0)
    return Agreement(float(err.max()), float((err - (atol + rtol * np.abs(ref))).max()))


def max_abs_diff(a, b) -> float:
    """The largest |a - b| (0 for empty arrays)."""
    err = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(err.max()) if err.size else 0.0


def random_feeds(inputs, batch: int, steps: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Random inputs for a graph's inputs (onnxruntime's NodeArgs): a dimension without a fixed
    size is `batch` in the first position and `steps` elsewhere; integer inputs hold `steps`
    (lengths), floating ones standard normal values."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in inputs:
        dims = arg.shape or []
        shape = [d if isinstance(d, int) and d > 0 else (batch if k == 0 else steps)
                 for k, d in enumerate(dims)]
        kind = arg.type[len("tensor("):-1]
        if "int" in kind:
            feeds[arg.name] = np.full(shape, steps, np.dtype(kind))
        elif kind in ("float", "double", "float16"):
            dtype = {"float": np.float32, "double": np.float64, "float16": np.float16}[kind]
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif kind == "bool":
            feeds[arg.name] = np.zeros(shape, bool)
        else:
            raise ValueError(f"cannot make random values for input {arg.name!r} of {arg.type}")
    return feeds


def onnx_twin(model, *, state_inputs: bool = False) -> bytes:
    """The ONNX graph fastgru writes for `model`'s weights, serialized, in float32 (onnxruntime's
    GRU is float32 only: a float64 or bfloat16 model is compared through this twin)."""
    from fastgru._model import GRU

    twin = model if model.precision == "float32" else GRU(model.spec,
                                                          batch_first=model.batch_first)
    return twin.to_onnx(state_inputs=state_inputs).SerializeToString()


def fixed_sizes(session, batch_first: bool) -> tuple[int | None, int | None]:
    """(batch, steps) a GRU graph's first input fixes, None where it does not."""
    dims = list(session.get_inputs()[0].shape or [])
    if len(dims) != 3:
        return None, None
    fixed = [d if isinstance(d, int) and d > 0 else None for d in dims]
    return (fixed[0], fixed[1]) if batch_first else (fixed[1], fixed[0])


def onnxruntime_output(session, model, x: np.ndarray) -> np.ndarray:
    """Y of a GRU graph in onnxruntime, in fastgru's layout: x to the first input, full lengths,
    zero initial states. ValueError for an input it cannot feed."""
    B = x.shape[0 if model.batch_first else 1]
    T = x.shape[1 if model.batch_first else 0]
    feeds = {}
    for i, graph_input in enumerate(session.get_inputs()):
        if i == 0:
            feeds[graph_input.name] = x
        elif "int" in graph_input.type:
            feeds[graph_input.name] = np.full(B, T, np.int32)
        elif len(graph_input.shape) == 3:
            feeds[graph_input.name] = np.zeros(
                (model.num_layers * model.spec.num_directions, B, model.hidden_size),
                np.float32)
        else:
            raise ValueError(f"cannot feed input {graph_input.name!r} {graph_input.shape}")
    y = session.run(None, feeds)[0]
    if y.ndim == 4:  # a bare GRU node: (T, dirs, B, H), or (B, T, dirs, H) with layout=1
        y = y.reshape(*y.shape[:2], -1) if model.batch_first else \
            y.transpose(0, 2, 1, 3).reshape(T, B, -1)
    return y


def torch_comparable(model) -> bool:
    """Whether PyTorch's nn.GRU computes this model (linear_before_reset=1, no clip, not
    reverse-only)."""
    return model.linear_before_reset and model.clip is None and model.direction != "reverse"


def torch_module(model):
    """A torch.nn.GRU (float32, eval mode) holding `model`'s weights."""
    from fastgru.loaders.torch import module_from_spec

    return module_from_spec(model.spec, batch_first=model.batch_first)


def torch_output(model, x: np.ndarray) -> np.ndarray:
    """Y of PyTorch's nn.GRU holding `model`'s weights on x."""
    import torch

    module = torch_module(model)
    with torch.inference_mode():
        return module(torch.from_numpy(np.ascontiguousarray(x, np.float32)))[0].numpy()
