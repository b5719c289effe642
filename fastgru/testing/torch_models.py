"""PyTorch models for tests, tools and benchmarks: a seeded torch.nn.GRU, its outputs as NumPy
arrays, whole networks built around GRU stacks (as speech enhancers, translators and streaming
services are built), and their export to ONNX. Needs torch (the test extra).

torch.nn.GRU's shapes: x (T, B, D), or (B, T, D) with batch_first; h0 and h_n
(layers*dirs, B, H); y (T, B, dirs*H).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch

__all__ = ["torch_gru", "run_torch", "MaskNet", "EncoderDecoder", "StreamingNet",
           "BidirectionalBatchFirst", "export"]


def torch_gru(input_size, hidden_size, num_layers=1, bidirectional=False, bias=True,
              batch_first=False, dtype=torch.float32, seed=0):
    """A torch.nn.GRU with PyTorch's initialization under torch.manual_seed(seed), in eval mode:
    weight_ih_l{k} (3H, D_in), weight_hh_l{k} (3H, H), gates (r, z, n)."""
    torch.manual_seed(seed)
    return torch.nn.GRU(input_size, hidden_size, num_layers=num_layers, bias=bias,
                        bidirectional=bidirectional, batch_first=batch_first).to(dtype).eval()


def run_torch(module, x, h0=None, lengths=None):
    """Outputs of the module as NumPy arrays; lengths go through a packed sequence.

    x (T, B, D) or (B, T, D) as the module's batch_first says, h0 (layers*dirs, B, H), lengths
    (B,): returns y (T, B, dirs*H) (or batch first, zeros past each length) and h_n.
    """
    dtype = next(module.parameters()).dtype
    xt = torch.as_tensor(x, dtype=dtype)
    ht = None if h0 is None else torch.as_tensor(h0, dtype=dtype)
    with torch.no_grad():
        if lengths is None:
            y, h_n = module(xt, ht)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xt, torch.as_tensor(lengths), batch_first=module.batch_first, enforce_sorted=False)
            y, h_n = module(packed, ht)
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(
                y, batch_first=module.batch_first,
                total_length=x.shape[1 if module.batch_first else 0])
    return y.numpy(), h_n.numpy()


class MaskNet(torch.nn.Module):
    """Conv front-end -> 2-layer GRU -> Linear -> Sigmoid mask, as speech enhancers are built."""

    def __init__(self, features=16, hidden=32):
        super().__init__()
        self.conv = torch.nn.Conv1d(features, features, 3, padding=1)
        self.gru = torch.nn.GRU(features, hidden, 2, batch_first=True)
        self.head = torch.nn.Linear(hidden, features)

    def forward(self, x):  # (B, T, F)
        h = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return torch.sigmoid(self.head(self.gru(h)[0])) * x


class EncoderDecoder(torch.nn.Module):
    """Two GRU stacks: the decoder starts from the encoder's final state."""

    def __init__(self, features=8, hidden=24):
        super().__init__()
        self.encoder = torch.nn.GRU(features, hidden, 2)
        self.decoder = torch.nn.GRU(features, hidden, 2)
        self.out = torch.nn.Linear(hidden, 3)

    def forward(self, source, target):  # (T, B, F) each
        _, state = self.encoder(source)
        return self.out(self.decoder(target, state)[0])


class StreamingNet(torch.nn.Module):
    """Frame by frame: the GRU states are graph inputs and outputs."""

    def __init__(self, features=10, hidden=20):
        super().__init__()
        self.inp = torch.nn.Linear(features, features)
        self.gru = torch.nn.GRU(features, hidden, 2)
        self.out = torch.nn.Linear(hidden, features)

    def forward(self, frame, state):  # (1, B, F), (2, B, H)
        y, state = self.gru(torch.tanh(self.inp(frame)), state)
        return self.out(y), state


class BidirectionalBatchFirst(torch.nn.Module):
    """A 2-layer bidirectional batch_first stack: x (B, T, F) -> y * 2 (B, T, 2H), h (4, B, H)."""

    def __init__(self, features=6, hidden=12):
        super().__init__()
        self.gru = torch.nn.GRU(features, hidden, 2, batch_first=True, bidirectional=True)

    def forward(self, x):
        y, h = self.gru(x)
        return y * 2.0, h


def export(module, args, path, names, dynamo):
    """module exported to ONNX at path (str) by torch.onnx.export, quietly: names is (input
    names, output names); dynamo picks the exporter (opset 18) or the legacy one (opset 14)."""
    torch.manual_seed(0)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=names[0],
                          output_names=names[1], dynamo=dynamo,
                          opset_version=18 if dynamo else 14)
    return str(path)
