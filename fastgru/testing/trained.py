"""Small GRUs trained in the test setup, so accuracy is checked on weights that look trained.

Random weights of the usual scale keep every gate near 0.5 and forget their input in a few
steps; trained networks have slow units (update gate z near 1) that carry a rounding bias over
thousands of steps. Each model here is trained for a few seconds with PyTorch, seeded, on a task
that rewards memory: predict an exponential moving average of the input with a long time
constant. Slow units are seeded the way "chrono initialization" does it (Tallec & Ollivier,
2018): the update gate's bias set to log(U(1, T_max)), so z starts near 1 - 1/T_max.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Recipe:
    name: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    chrono_max: float | None = None  # T_max of the chrono initialization, None: PyTorch's init
    train_steps: int = 60


RECIPES = {r.name: r for r in (
    Recipe("slow-units", 8, 64, chrono_max=2000.0),
    Recipe("stack-256", 64, 256, num_layers=2, chrono_max=300.0, train_steps=40),
    Recipe("bidirectional", 16, 32, num_layers=2, bidirectional=True, chrono_max=1000.0),
)}


def train(recipe: Recipe, seed: int = 0):
    """A torch.nn.GRU (float32, time-major) trained on the moving-average task, in eval mode."""
    import torch

    torch.manual_seed(seed)
    gru = torch.nn.GRU(recipe.input_size, recipe.hidden_size, recipe.num_layers,
                       bidirectional=recipe.bidirectional)
    dirs = 2 if recipe.bidirectional else 1
    H = recipe.hidden_size
    if recipe.chrono_max is not None:
        with torch.no_grad():
            for name, bias in gru.named_parameters():
                if name.startswith("bias_ih"):
                    bias[H:2 * H] = torch.log(torch.empty(H).uniform_(1.0, recipe.chrono_max))
                elif name.startswith("bias_hh"):
                    bias[H:2 * H] = 0.0
    readout = torch.nn.Linear(dirs * H, 1)
    optimizer = torch.optim.Adam([*gru.parameters(), *readout.parameters()], lr=3e-3)
    generator = torch.Generator().manual_seed(seed + 1)
    for _ in range(recipe.train_steps):
        x = torch.randn(60, 8, recipe.input_size, generator=generator)
        target = torch.zeros(60, 8, 1)
        average = torch.zeros(8)
        for t in range(60):  # slow EMA of the first feature: only slow units can track it
            average = 0.97 * average + 0.03 * x[t, :, 0]
            target[t, :, 0] = average * 5
        loss = torch.nn.functional.mse_loss(readout(gru(x)[0]), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return gru.eval()


def long_input(rng, steps: int, batch: int, features: int) -> np.ndarray:
    """(T, B, D) float32 input that keeps a trained model busy: unit noise plus slow drifts."""
    t = np.arange(steps)[:, None, None]
    drift = np.sin(2 * np.pi * t / rng.uniform(200, 2000, (1, batch, features)))
    return (rng.standard_normal((steps, batch, features)) + drift).astype(np.float32)


CASES = (  # (recipe, steps, lengths or None, linear_before_reset): the drift suite's cases
    ("slow-units", 10_000, None, True),
    ("stack-256", 3_000, None, True),
    ("bidirectional", 2_000, [2_000, 1_333, 1], True),
    ("slow-units", 3_000, None, False),
)

_models: dict = {}


def trained(name: str):
    """The recipe's trained module, trained once per process."""
    if name not in _models:
        _models[name] = train(RECIPES[name])
    return _models[name]


def max_error(outputs, truth) -> float:
    """The largest |a - b| over pairs of arrays of the same shapes (outputs against truth)."""
    return max(float(np.abs(np.asarray(a, np.float64) - b).max())
               for a, b in zip(outputs, truth, strict=True))


def _onnxruntime(model, x, lengths):
    """onnxruntime on the model's ONNX export (it writes the weights; onnxruntime computes)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.to_onnx(state_inputs=True).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    T, B = x.shape[:2]
    dirs = 2 if model.bidirectional else 1
    h0 = np.zeros((model.num_layers * dirs, B, model.hidden_size), np.float32)
    steps = np.full(B, T) if lengths is None else np.asarray(lengths)
    return session.run(None, {"X": x, "initial_h": h0, "sequence_lens": steps.astype(np.int32)})


def long_sequence_errors(name: str, steps: int, lengths, linear_before_reset: bool):
    """(errors, fastgru's outputs, truth): max |runtime - float64 truth| per runtime.

    linear_before_reset=1: the truth is the PyTorch module in float64 and the peers are
    PyTorch and onnxruntime (float32). linear_before_reset=0, which PyTorch lacks: the same
    weights, the truth the float64 reference written from the equations, onnxruntime the peer.
    """
    import fastgru
    from fastgru.testing.reference import reference_gru
    from fastgru.testing.torch_models import run_torch

    module = trained(name)
    batch = 2 if lengths is None else len(lengths)
    x = long_input(np.random.default_rng(5), steps, batch, module.input_size)
    model = fastgru.GRU.from_torch(module)
    errors = {}
    if linear_before_reset:
        truth = run_torch(module.double(), x.astype(np.float64), lengths=lengths)
        module.float()
        errors["PyTorch"] = max_error(run_torch(module, x, lengths=lengths), truth)
        errors["fastgru float64"] = max_error(
            fastgru.GRU.from_torch(module, dtype="float64")(x, lengths=lengths), truth)
    else:
        spec = model.spec.__class__(model.spec.layers, model.spec.direction,
                                    linear_before_reset=False)
        model = fastgru.GRU(spec)
        truth = reference_gru(x, [(w.w, w.r, w.b) for w in spec.layers],
                              direction=spec.direction, linear_before_reset=False,
                              lengths=lengths)
    ours = model(x, lengths=lengths)
    errors["fastgru"] = max_error(ours, truth)
    errors["onnxruntime"] = max_error(_onnxruntime(model, x, lengths), truth)
    return errors, ours, truth
