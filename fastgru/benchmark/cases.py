"""What the benchmark runs: the shapes of DESIGN.md (S1-S6) on seeded random weights, or the
user's model file."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Case:
    """One benchmark: a model (built-in random weights, or a file) and an input shape."""

    name: str
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    stream: bool = False
    model_path: str | None = None
    whole_graph: bool = False  # an ONNX model with more than GRUs: fastgru.InferenceSession
    load_options: dict | None = None  # fastgru.load's options for model_path

    @property
    def flops(self) -> float:
        """Multiply-adds as 2 FLOPs over all layers and directions: 6*H*(D_in + H) per row-step."""
        dirs = 2 if self.bidirectional else 1
        per_row_step = sum(
            dirs * 6 * self.hidden_size * ((self.input_size if k == 0 else dirs * self.hidden_size)
                                           + self.hidden_size)
            for k in range(self.num_layers))
        return float(per_row_step * self.batch * self.steps)

    @property
    def label(self) -> str:
        if self.whole_graph:
            return f"{self.name} (whole graph) B={self.batch} T={self.steps}"
        layers = f" L={self.num_layers}" if self.num_layers > 1 else ""
        bi = " bi" if self.bidirectional else ""
        return (f"{self.name} B={self.batch} T={self.steps} D={self.input_size} "
                f"H={self.hidden_size}{layers}{bi}")


SHAPES = {c.name: c for c in (
    Case("S1", 1, 1, 64, 128, stream=True),   # stream step, state carried
    Case("S2", 1, 100, 64, 256),              # one sequence, batch 1
    Case("S3", 16, 100, 128, 256),            # small batch
    Case("S4", 64, 50, 256, 512),             # throughput
    Case("S5", 8, 200, 80, 256, 2, True),     # stacked bidirectional
    Case("S6", 1, 50, 256, 1024),             # large hidden
)}


def case_for_model(path: str, batch: int, steps: int, load_options=None) -> Case:
    """A case for the user's model file: a GRU model, or an ONNX model that is more than a GRU
    stack (run whole by fastgru.InferenceSession against onnxruntime on the same file; its
    sizes are the feeds', so the case carries none)."""
    import fastgru
    from fastgru.loaders import files

    try:
        model = fastgru.load(path, **(load_options or {}))
    except fastgru.FormatError:
        if files.sniff(path) != "onnx":
            raise
        fastgru.InferenceSession(path)  # a clear error if it cannot run either
        return Case(os.path.basename(path), batch, steps, 0, 0,
                    model_path=os.path.abspath(path), whole_graph=True)
    return Case(os.path.basename(path), batch, steps, model.input_size, model.hidden_size,
                model.num_layers, model.bidirectional, model_path=os.path.abspath(path),
                load_options=load_options or None)


def _random_state_dict(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch-keyed random weights, the same in every worker, without needing torch."""
    rng = np.random.default_rng(seed)
    H, dirs = case.hidden_size, 2 if case.bidirectional else 1
    bound = 1 / np.sqrt(H)
    state = {}
    for k in range(case.num_layers):
        d_in = case.input_size if k == 0 else dirs * H
        for suffix in ["", "_reverse"][:dirs]:
            for name, size in (("weight_ih", (3 * H, d_in)), ("weight_hh", (3 * H, H)),
                               ("bias_ih", (3 * H,)), ("bias_hh", (3 * H,))):
                state[f"{name}_l{k}{suffix}"] = rng.uniform(-bound, bound, size).astype(np.float32)
    return state


def builtin_model(case: Case):
    """The case's model file, or seeded random weights of its shape (the same in every process)."""
    import fastgru

    if case.model_path:
        return fastgru.load(case.model_path, **(case.load_options or {}))
    return fastgru.GRU.from_torch(_random_state_dict(case))
