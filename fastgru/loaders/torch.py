"""PyTorch weights (nn.GRU, nn.GRUCell, their dynamically quantized GRU, state dicts) to the
canonical layout.

PyTorch stacks gate rows as (r, z, n); the canonical order is (z, r, n). Keys per layer k:
weight_ih_l{k} (3H, D_in), weight_hh_l{k} (3H, H), bias_ih_l{k} (3H,), bias_hh_l{k} (3H,), with the
suffix ``_reverse`` for the backward direction; nn.GRUCell uses the same names without ``_l{k}``.
torch is imported only when the caller passes a torch object, never by fastgru itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from fastgru._boundary import memory_bytes
from fastgru._weights import GRUSpec, Int8Layer, LayerWeights, dequantized
from fastgru.errors import FormatError
from fastgru.loaders import files, native

_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)(_l(\d+))?(_reverse)?$")


def _to_numpy(name: str, value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no NumPy twin
        value = value.detach().cpu()
        if not value.dtype.is_floating_point:
            raise FormatError(f"{name} must be a floating-point tensor, got {value.dtype}")
        value = value.double().numpy()
    array = np.asarray(value)
    if array.dtype.kind != "f":
        raise FormatError(f"{name} must hold floating-point weights, got dtype {array.dtype}")
    return array.astype(np.float64)


def _reorder(rows: np.ndarray, H: int) -> np.ndarray:
    """Swap the first two row blocks of a (3H, ...) or (3H,) array: (r, z, n) <-> (z, r, n)."""
    return np.concatenate([rows[H:2 * H], rows[:H], rows[2 * H:]], axis=0)


def _module_state(src):
    """(state dict, batch_first, int8 weights) of an nn.GRU / nn.GRUCell, or None for anything
    else; the int8 weights of a dynamically quantized GRU (see _quantized_state), else None."""
    kind = type(src).__name__
    if not hasattr(src, "state_dict") or not callable(src.state_dict):
        return None
    if kind == "GRU" and hasattr(src, "_all_weight_values"):
        return (*_quantized_state(src), bool(src.batch_first))
    if kind == "GRU":
        return src.state_dict(), None, bool(src.batch_first)
    if kind == "GRUCell" and ".quantized." in type(src).__module__:
        raise TypeError("from_torch reads quantize_dynamic's GRU, not its GRUCell: load the "
                        "float GRUCell (dtype='int8' quantizes it here)")
    if kind == "GRUCell":
        return src.state_dict(), None, False
    raise TypeError(f"from_torch takes a torch.nn.GRU or nn.GRUCell module, got {kind}")


def _quantized_state(src) -> tuple[dict, dict]:
    """(state dict of float weights, {name: (int8 values, float32 scale per row)}) of a GRU
    quantized by torch.ao.quantization.quantize_dynamic (torch.ao.nn.quantized.dynamic.GRU):
    qint8 weights, one scale per tensor or per row, zero points 0 (symmetric), kept as they
    are; the float weights are those values times their scales. float16 dynamic quantization
    gives float weights, read as such."""
    if src.mode != "GRU":
        raise TypeError(f"from_torch takes a GRU, got a quantized {src.mode}")
    state, int8 = {}, {}
    for name, tensor in {**src.get_weight(), **src.get_bias()}.items():
        if not getattr(tensor, "is_quantized", False):
            state[name] = tensor
            continue
        scheme = str(tensor.qscheme())
        if str(tensor.dtype) != "torch.qint8" or scheme not in (
                "torch.per_tensor_affine", "torch.per_tensor_symmetric",
                "torch.per_channel_affine", "torch.per_channel_symmetric"):
            raise FormatError(f"{name}: int8 weights must be qint8 per tensor or per row, got "
                              f"{tensor.dtype} {scheme}")
        per_row = "channel" in scheme
        zeros = tensor.q_per_channel_zero_points() if per_row else tensor.q_zero_point()
        if per_row and tensor.q_per_channel_axis() != 0:
            raise FormatError(f"{name}: per-channel int8 weights must have a scale per row "
                              f"(axis 0), got axis {tensor.q_per_channel_axis()}")
        if np.any(np.asarray(zeros) != 0):
            raise FormatError(f"{name}: int8 weights with a zero point other than 0 are not "
                              f"symmetric, as fastgru's int8 kernels take them")
        values = tensor.int_repr().numpy().astype(np.int8)
        scale = (tensor.q_per_channel_scales().numpy() if per_row
                 else np.full(values.shape[0], tensor.q_scale()))
        int8[name] = values, scale.astype(np.float32)
        state[name] = dequantized(*int8[name])
    return state, int8 or None  # float16 quantization: float weights only


def _with_int8(spec: GRUSpec, int8: dict) -> GRUSpec:
    """spec with each layer's int8 values and scales (as _quantized_state gives them, keyed by
    torch's names) attached, in the canonical gate order."""
    H, dirs = spec.hidden_size, spec.num_directions
    layers = []
    for k, layer in enumerate(spec.layers):
        parts = {}
        for name in ("weight_ih", "weight_hh"):
            pairs = [int8[f"{name}_l{k}{'_reverse' if d else ''}"] for d in range(dirs)]
            parts[name] = (np.stack([_reorder(v, H) for v, _ in pairs]),
                           np.stack([_reorder(s, H) for _, s in pairs]))
        layers.append(replace(layer, int8=Int8Layer(*parts["weight_ih"], *parts["weight_hh"])))
    return replace(spec, layers=tuple(layers))


def _find_prefix(keys) -> str:
    """The one prefix in front of a GRU's keys in a (possibly larger) state dict."""
    prefixes = sorted({k[: -len(s)] for k in keys for s in ("weight_hh_l0", "weight_hh")
                       if k.endswith(s) and (len(k) == len(s) or k[-len(s) - 1] == ".")})
    if not prefixes:
        shown = ", ".join(list(keys)[:8])
        raise FormatError(f"not a GRU state dict: no 'weight_hh_l0' or 'weight_hh' key "
                         f"(keys: {shown}{', ...' if len(keys) > 8 else ''})")
    if len(prefixes) > 1:
        raise FormatError(f"the state dict holds several GRUs; pick one with prefix=, "
                         f"one of {prefixes}")
    return prefixes[0]


def _check_sizes(own: dict, prefix: str) -> None:
    """Refuse before converting anything: weights whose float64 copies alone (from their
    shapes, which a broadcast tensor in a small file can make huge) would not fit in memory."""
    total = 0
    for key, value in own.items():
        shape = getattr(value, "shape", None)
        if shape is None or _KEY.fullmatch(key) is None:
            continue
        try:
            dims = [int(d) for d in shape]
        except (TypeError, ValueError):
            raise FormatError(f"{prefix}{key} has no valid shape: {shape!r}") from None
        strides = value.stride() if callable(getattr(value, "stride", None)) else \
            getattr(value, "strides", ())
        pairs = zip(strides, dims, strict=False)
        if all(dims) and any(stride == 0 and dim > 1 for stride, dim in pairs):
            raise FormatError(f"{prefix}{key} is a broadcast view (a stride of 0) claiming "
                              f"shape {tuple(dims)} from a few stored values; trained weights "
                              f"are never stored so")
        total += int(np.prod(dims, dtype=object)) if dims else 1
    if 8 * total > memory_bytes():
        raise FormatError(f"the GRU's weights under {prefix!r} claim {total} values "
                          f"({8 * total / 2**30:.1f} GiB as float64), more than this "
                          f"machine's memory")


def _resolve_prefix(keys, prefix: str) -> str:
    """prefix itself when keys start with it; "gru" finds "gru."; else a FormatError naming
    the prefixes that hold GRU keys."""
    if any(k.startswith(prefix) and _KEY.fullmatch(k[len(prefix):]) for k in keys):
        return prefix
    if not prefix.endswith(".") and any(k.startswith(prefix + ".") for k in keys):
        return prefix + "."
    found = sorted({k[:-len(m.group(0))] for k in keys for m in [_KEY.search(k)] if m})
    raise FormatError(f"no GRU keys under prefix {prefix!r}; the state dict has GRU keys under "
                      f"{found or 'no prefix at all'}")


def spec_from_state_dict(state: Mapping, prefix: str | None = None) -> GRUSpec:
    """The canonical spec of a GRU's state dict (keys as nn.GRU or nn.GRUCell name them)."""
    odd = [k for k in state if not isinstance(k, str)]
    if odd:
        raise FormatError(f"a state dict's keys are parameter names (str), got "
                          f"{type(odd[0]).__name__} {odd[0]!r}")
    prefix = _find_prefix(list(state)) if prefix is None else _resolve_prefix(list(state), prefix)
    # Only the GRU's values are touched: a lazily read file reads nothing else.
    own = {k[len(prefix):]: state[k] for k in state
           if k.startswith(prefix) and _KEY.fullmatch(k[len(prefix):])}
    _check_sizes(own, prefix)
    params: dict[tuple[str, int, bool], np.ndarray] = {}
    cell = "weight_hh" in own
    for key, value in own.items():
        match = _KEY.fullmatch(key)
        if match is None:
            continue
        name, _, layer, reverse = match.groups()
        if cell != (layer is None):
            raise FormatError(f"state dict mixes nn.GRUCell keys ('weight_hh') with nn.GRU keys "
                             f"('{prefix}{key}')")
        params[(name, int(layer or 0), bool(reverse))] = _to_numpy(prefix + key, value)
    if not params:
        raise FormatError(f"no GRU keys under prefix {prefix!r}")

    num_layers = 1 + max(layer for _, layer, _ in params)
    bidirectional = any(reverse for _, _, reverse in params)
    has_bias = any(name.startswith("bias") for name, _, _ in params)
    w_hh = params.get(("weight_hh", 0, False))
    if w_hh is None or w_hh.ndim != 2 or w_hh.shape[0] != 3 * w_hh.shape[1] or not w_hh.size:
        got = None if w_hh is None else w_hh.shape
        raise FormatError(f"{prefix}weight_hh{'' if cell else '_l0'} must have shape (3*H, H) "
                         f"for a GRU, got {got}")
    H = w_hh.shape[1]

    layers = []
    for k in range(num_layers):
        ws, rs, bs = [], [], []
        for reverse in ([False, True] if bidirectional else [False]):
            suffix = ("" if cell else f"_l{k}") + ("_reverse" if reverse else "")
            names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if has_bias else [])
            missing = [f"{prefix}{n}{suffix}" for n in names if (n, k, reverse) not in params]
            if missing:
                raise FormatError(f"state dict is missing {', '.join(missing)}")
            w_ih, w_hh = params[("weight_ih", k, reverse)], params[("weight_hh", k, reverse)]
            if w_hh.shape != (3 * H, H):
                raise FormatError(f"{prefix}weight_hh{suffix} must have shape {(3 * H, H)}, "
                                 f"got {w_hh.shape}")
            if w_ih.ndim != 2 or w_ih.shape[0] != 3 * H:
                raise FormatError(f"{prefix}weight_ih{suffix} must have shape (3*{H}, input), "
                                 f"got {w_ih.shape}")
            if has_bias:
                b_ih, b_hh = params[("bias_ih", k, reverse)], params[("bias_hh", k, reverse)]
                for n, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
                    if b.shape != (3 * H,):
                        raise FormatError(f"{prefix}{n}{suffix} must have shape {(3 * H,)}, "
                                         f"got {b.shape}")
                bias = np.concatenate([_reorder(b_ih, H), _reorder(b_hh, H)])
            else:
                bias = np.zeros(6 * H)
            ws.append(_reorder(w_ih, H))
            rs.append(_reorder(w_hh, H))
            bs.append(bias)
        layers.append(LayerWeights(w=np.stack(ws), r=np.stack(rs), b=np.stack(bs)))
    try:
        return GRUSpec(tuple(layers), direction="bidirectional" if bidirectional else "forward",
                       linear_before_reset=True)
    except ValueError as error:  # NaN or inf among the weights
        raise FormatError(f"the GRU under prefix {prefix!r}: {error}") from None


def spec_from_torch(src, prefix: str | None = None) -> tuple[GRUSpec, bool]:
    """(spec, batch_first) from a module, a state dict, or a .pt/.pth/.safetensors file."""
    if isinstance(src, (str, os.PathLike)):
        path = files.check_file(src)
        if files.sniff(path) == "safetensors":
            tensors, metadata = files.read_safetensors(path)
            if native.is_native(metadata):
                raise FormatError(f"{path!r} is a fastgru file, not PyTorch weights: read it "
                                  f"with fastgru.load")
            return spec_from_state_dict(tensors, prefix=prefix), False
        return spec_from_state_dict(files.read_torch(path), prefix=prefix), False
    module = _module_state(src)
    if module is not None:
        state, int8, batch_first = module
        spec = spec_from_state_dict(state, prefix=prefix if prefix is not None else "")
        return (spec if int8 is None else _with_int8(spec, int8)), batch_first
    if isinstance(src, Mapping):
        return spec_from_state_dict(src, prefix=prefix), False
    raise TypeError(f"from_torch takes an nn.GRU / nn.GRUCell module, a state dict "
                    f"(name -> tensor or ndarray) or a file path, got {type(src).__name__}")


def spec_to_state_dict(spec: GRUSpec) -> dict[str, np.ndarray]:
    """nn.GRU keys for a spec (linear_before_reset=1 only: PyTorch has no other variant)."""
    if not spec.linear_before_reset:
        raise ValueError("PyTorch's GRU computes linear_before_reset=1; this model uses 0 and "
                         "has no PyTorch equivalent (export it to ONNX instead)")
    if spec.clip is not None:
        raise ValueError(f"PyTorch's GRU has no clip; this model clips at {spec.clip}")
    if spec.direction == "reverse":
        raise ValueError("PyTorch's GRU has no reverse-only direction")
    H = spec.hidden_size
    state = {}
    for k, layer in enumerate(spec.layers):
        for d, suffix in enumerate(["", "_reverse"][:spec.num_directions]):
            state[f"weight_ih_l{k}{suffix}"] = _reorder(layer.w[d], H)
            state[f"weight_hh_l{k}{suffix}"] = _reorder(layer.r[d], H)
            state[f"bias_ih_l{k}{suffix}"] = _reorder(layer.b[d, :3 * H], H)
            state[f"bias_hh_l{k}{suffix}"] = _reorder(layer.b[d, 3 * H:], H)
    return state


def module_from_spec(spec: GRUSpec, *, batch_first: bool = False):
    """A torch.nn.GRU (eval mode, float32) holding the spec's weights."""
    import torch

    module = torch.nn.GRU(spec.input_size, spec.hidden_size, num_layers=len(spec.layers),
                          bidirectional=spec.direction == "bidirectional", batch_first=batch_first)
    module.load_state_dict({k: torch.from_numpy(v.astype(np.float32))
                            for k, v in spec_to_state_dict(spec).items()})
    return module.eval()
