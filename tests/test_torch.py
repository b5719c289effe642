"""fastgru against torch.nn.GRU and nn.GRUCell, loaded through GRU.from_torch."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastgru
from fastgru.errors import FormatError
from fastgru.testing.asserts import assert_close
from fastgru.testing.torch_models import run_torch, torch_gru

CASES = list(itertools.product([1, 2, 3], [False, True], [True, False], [False, True]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_layers, bidirectional, bias, batch_first", CASES)
def test_module_matches_torch(rng, num_layers, bidirectional, bias, batch_first, dtype):
    module = torch_gru(6, 8, num_layers, bidirectional, bias, batch_first, getattr(torch, dtype))
    model = fastgru.GRU.from_torch(module, dtype=dtype)
    assert (model.num_layers, model.bidirectional, model.batch_first) == \
        (num_layers, bidirectional, batch_first)
    dirs = 2 if bidirectional else 1
    x = rng.standard_normal((3, 7, 6) if batch_first else (7, 3, 6))
    h0 = rng.standard_normal((num_layers * dirs, 3, 8))
    lengths = np.array([7, 2, 5])
    for kwargs in ({}, {"h0": h0}, {"h0": h0, "lengths": lengths}):
        y, h_n = model(x, kwargs.get("h0"), lengths=kwargs.get("lengths"))
        y_t, h_t = run_torch(module, x, kwargs.get("h0"), kwargs.get("lengths"))
        assert_close(y, y_t, dtype, f"y {sorted(kwargs)}")
        assert_close(h_n, h_t, dtype, f"h_n {sorted(kwargs)}")


def test_unbatched_matches_torch(rng):
    module = torch_gru(4, 5, 2, bidirectional=True)
    x = rng.standard_normal((6, 4))
    h0 = rng.standard_normal((4, 5))
    y, h_n = fastgru.GRU.from_torch(module)(x, h0)
    y_t, h_t = run_torch(module, x, h0)
    assert_close(y, y_t, "float32", "y")
    assert_close(h_n, h_t, "float32", "h_n")


@pytest.mark.parametrize("as_numpy", [False, True])
def test_state_dict_with_prefix_or_found_alone(rng, as_numpy):
    module = torch_gru(3, 4, 2, bidirectional=True)
    whole = {f"encoder.rnn.{k}": (v.numpy() if as_numpy else v)
             for k, v in module.state_dict().items()}
    whole["encoder.proj.weight"] = torch.zeros(2, 8)
    x = rng.standard_normal((5, 2, 3))
    y_t, h_t = run_torch(module, x)
    for model in (fastgru.GRU.from_torch(whole),
                  fastgru.GRU.from_torch(whole, prefix="encoder.rnn.")):
        y, h_n = model(x)
        assert_close(y, y_t, "float32", "y")
        assert_close(h_n, h_t, "float32", "h_n")


def test_state_dict_with_two_grus_needs_a_prefix():
    a, b = torch_gru(3, 4).state_dict(), torch_gru(3, 4, seed=1).state_dict()
    both = {**{f"enc.{k}": v for k, v in a.items()}, **{f"dec.{k}": v for k, v in b.items()}}
    with pytest.raises(ValueError, match=r"several GRUs.*\['dec\.', 'enc\.'\]"):
        fastgru.GRU.from_torch(both)
    model = fastgru.GRU.from_torch(both, prefix="dec.")
    assert_close(model.spec.layers[0].r, fastgru.GRU.from_torch(b).spec.layers[0].r,
                 "float64", "dec weights")


def test_tensors_that_require_grad(rng):
    """torch.nn.GRU takes x and h0 that require grad (a model in training code, a parameter
    as h0); fastgru once raised torch's RuntimeError for them. Also for streams."""
    module = torch_gru(4, 5, 2, batch_first=True)
    model = fastgru.GRU.from_torch(module)
    x = torch.randn(3, 6, 4, requires_grad=True)
    h0 = torch.nn.Parameter(torch.randn(2, 3, 5))
    y_t, h_t = module(x, h0)  # torch takes them as they are
    y, h_n = model(x, h0)
    assert_close(y, y_t.detach().numpy(), "float32", "y")
    assert_close(h_n, h_t.detach().numpy(), "float32", "h_n")
    stream = model.stream(batch_size=3)
    stream.h = h0
    assert_close(stream.step(x[:, 0]), y_t[:, 0].detach().numpy(), "float32", "step")
    assert x.grad is None and h0.grad is None


def test_gru_cell_through_a_stream(rng):
    torch.manual_seed(3)
    cell = torch.nn.GRUCell(5, 6).eval()
    model = fastgru.GRU.from_torch(cell)
    assert (model.num_layers, model.bidirectional) == (1, False)
    stream = model.stream(batch_size=2)
    h = torch.zeros(2, 6)
    for _ in range(10):
        x_t = rng.standard_normal((2, 5))
        with torch.no_grad():
            h = cell(torch.as_tensor(x_t, dtype=torch.float32), h)
        assert_close(stream.step(x_t), h.numpy(), "float32", "step")
    assert_close(stream.h[0], h.numpy(), "float32", "stream.h")


def test_bfloat16_and_half_weights_load(rng):
    module = torch_gru(3, 4)
    x = rng.standard_normal((4, 1, 3))
    for dtype in (torch.float16, torch.bfloat16):
        state = {k: v.to(dtype) for k, v in module.state_dict().items()}
        y, _ = fastgru.GRU.from_torch(state)(x)
        rounded = torch_gru(3, 4)
        rounded.load_state_dict({k: v.float() for k, v in state.items()})
        assert_close(y, run_torch(rounded, x)[0], "float32", str(dtype))


def test_bad_torch_sources():
    with pytest.raises(TypeError, match="nn.GRU or nn.GRUCell module, got LSTM"):
        fastgru.GRU.from_torch(torch.nn.LSTM(3, 4))
    with pytest.raises(ValueError, match=r"weight_hh_l0 must have shape \(3\*H, H\)"):
        fastgru.GRU.from_torch(torch.nn.LSTM(3, 4).state_dict())
    with pytest.raises(ValueError, match="not a GRU state dict.*fc.weight"):
        fastgru.GRU.from_torch({"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(TypeError, match="state dict .* got int"):
        fastgru.GRU.from_torch(3)
    state = torch_gru(3, 4, 2).state_dict()
    del state["bias_hh_l1"]
    with pytest.raises(ValueError, match="missing bias_hh_l1"):
        fastgru.GRU.from_torch(state)
    state = torch_gru(3, 4).state_dict()
    state["weight_ih_l0"] = state["weight_ih_l0"][:5]
    with pytest.raises(ValueError, match=r"weight_ih_l0 must have shape \(3\*4, input\)"):
        fastgru.GRU.from_torch(state)
    with pytest.raises(FormatError, match="floating-point"):
        fastgru.GRU.from_torch({k: v.to(torch.int32) for k, v in torch_gru(3, 4).state_dict().items()})


def test_import_does_not_import_torch():
    code = "import sys, fastgru; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
