"""Keras GRU layers to the canonical layout, read with h5py, without TensorFlow or Keras.

Keras stores a GRU cell as kernel (D, 3H), recurrent_kernel (H, 3H) and bias, gates in the
canonical order (z, r, h): W = kernelᵀ, R = recurrent_kernelᵀ. With reset_after=True (Keras'
default, PyTorch's variant: linear_before_reset=1) bias is (2, 3H), input and recurrent biases;
with reset_after=False (linear_before_reset=0) it is (3H,), the input bias only.

Files: Keras 3 ``.keras`` (a zip of config.json and model.weights.h5, whose groups carry each
layer's name in the attribute ``name`` of their ``vars``), and Keras 2 / tf.keras / Keras 3
legacy ``.h5`` (the config in the attribute ``model_config``; each layer's weights listed in order
by the attribute ``weight_names`` of ``model_weights/<layer>``). A Keras model object is read
through its own get_config() and get_weights(). Only the chosen GRU layers' weights are read, and
no member or dataset is read whose declared size exceeds what the file can hold.

What the loaded model computes is decided from the model's dataflow (which layer reads which
tensor: the Functional config's ``inbound_nodes``, Keras 3 or Keras 2 form; a Sequential model is
a chain), never from the order of the layers:

- ``from_keras(src)``: the fastgru model maps the Keras model's input to the output of its top
  GRU layer (the sequence; with return_sequences=False Keras' output is its last step, h_n).
  Every GRU layer of the model must be in one stack that reads a model input.
- ``from_keras(src, layer=name)``: the fastgru model maps that layer's input to its output.

Accepted patterns (anything else is a FormatError that names the layer and what to use instead):

| pattern | accepted as |
|---|---|
| ``GRU`` | one layer, direction "forward" |
| ``GRU(go_backwards=True)`` alone | direction "reverse", outputs aligned with the input steps |
| ``Bidirectional(GRU, merge_mode="concat")`` | direction "bidirectional" |
| ``Bidirectional(..., backward_layer=GRU(go_backwards=True))`` | the same, when the backward layer's options equal the forward one's (its own weights) |
| GRU layers in a chain, each reading the one below (``return_sequences=True``) | a stack: same units, direction and options, no go_backwards |
| identity layers at inference between the input and the stack, or inside it: ``Dropout``, ``SpatialDropout1D``, ``GaussianNoise``, ``GaussianDropout``, ``AlphaDropout``, ``ActivityRegularization``, ``Identity`` | skipped |
| any layers after the top GRU (``Dense`` heads, ...), or reading its outputs | not computed: the model returns the top GRU's output |
| ``return_state=True`` | accepted (the state is h_n) |
| Sequential or Functional model, ``.keras``, ``.h5`` (Keras 3 or Keras 2 config), model object | all read the same way |

Refused: two GRU layers reading one input side by side (pick one with ``layer=``); a layer other
than the identities above between the model input and the stack, or between stacked layers (pick
one with ``layer=``: it is computed from its own input); a GRU that reads a mask (``Masking``,
``Embedding(mask_zero=True)`` upstream: call fastgru with ``lengths=`` instead for trailing
padding) or an initial state from the graph (pass ``h0=``); a layer called with
``training=True`` (its dropout applies at inference); merge modes other than "concat";
activations other than tanh/sigmoid; a float16/bfloat16 dtype policy; a layer called more than
once; GRUs nested in other models or wrappers; HDF5 external links, external or virtual datasets.

The reading is in modules of their own: ``keras_file`` (the .keras zip, the .h5 file or the model
object, with the size checks), ``keras_config`` (the config as a graph of layers and calls, type
checked), ``keras_dataflow`` (identity layers, masks, the stack to read) and ``keras_options``
(each GRU layer's options); this module turns the chosen layers into fastgru's spec.
"""  # noqa: E501 (the table's rows are as long as they are)

from __future__ import annotations

import os

import numpy as np

from fastgru._weights import GRUSpec, LayerWeights
from fastgru.errors import FormatError
from fastgru.loaders.keras_dataflow import IDENTITY, UnknownLayer
from fastgru.loaders.keras_file import read_file, read_model
from fastgru.loaders.keras_options import layer_options

__all__ = ["IDENTITY", "spec_from_keras"]


def _layer_weights(name: str, options: dict, arrays: list) -> LayerWeights:
    H, use_bias, reset_after = options["units"], options["use_bias"], options["reset_after"]
    per_direction = 3 if use_bias else 2
    dirs = 2 if options["bidirectional"] else 1
    if len(arrays) != per_direction * dirs:
        raise FormatError(f"Keras GRU {name!r}: expected {per_direction * dirs} weight arrays "
                          f"(kernel, recurrent_kernel{', bias' if use_bias else ''} per "
                          f"direction), got {len(arrays)}")
    ws, rs, bs = [], [], []
    for d in range(dirs):
        kernel, recurrent = arrays[d * per_direction:d * per_direction + 2]
        if kernel.ndim != 2 or kernel.shape[1] != 3 * H or recurrent.shape != (H, 3 * H):
            raise FormatError(f"Keras GRU {name!r}: kernel must be (input, {3 * H}) and "
                              f"recurrent_kernel ({H}, {3 * H}), got {kernel.shape} and "
                              f"{recurrent.shape}")
        bias = np.zeros(6 * H)
        if use_bias:
            b = arrays[d * per_direction + 2]
            expected = (2, 3 * H) if reset_after else (3 * H,)
            if b.shape != expected:
                raise FormatError(f"Keras GRU {name!r}: bias must be {expected} with "
                                  f"reset_after={reset_after}, got {b.shape}")
            bias[:b.size] = b.reshape(-1)
        ws.append(kernel.T)
        rs.append(recurrent.T)
        bs.append(bias)
    return LayerWeights(w=np.stack(ws), r=np.stack(rs), b=np.stack(bs))


def spec_from_keras(src, layer: str | None = None) -> tuple[GRUSpec, bool]:
    """(spec, batch_first) of the GRU layers of a Keras file (.keras, .h5) or model object."""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no Keras file at {path!r}")
        try:
            plan, weights = read_file(path, layer)
        except (FormatError, ImportError, UnknownLayer):
            raise
        except Exception as error:  # zipfile, h5py: a damaged or foreign file
            raise FormatError(f"{path!r} is not a readable Keras file: "
                              f"{type(error).__name__}: {error}") from None
    elif hasattr(src, "get_config") and hasattr(src, "layers"):
        plan, weights = read_model(src, layer)
    else:
        raise TypeError(f"from_keras takes a path to a .keras or .h5 file or a Keras model, got "
                        f"{type(src).__name__}")
    names = [g.name for g in plan]
    options = None
    stacked = []
    for gru in plan:
        these = layer_options(gru)
        if these["go_backwards"] and len(plan) > 1:
            raise FormatError(f"Keras GRU {gru.name!r}: go_backwards inside a stack of "
                              f"{len(plan)} GRU layers; pick one with layer=")
        if options is not None:
            if not options["return_sequences"]:
                raise FormatError(f"Keras GRU layers {names} do not form one stack: the layer "
                                  f"below {gru.name!r} returns its last step only; pick one with "
                                  f"layer=")
            differ = {k: these[k] for k in these if k != "return_sequences"
                      and these[k] != options[k]}
            if differ:
                raise FormatError(f"the Keras model's GRU layers {names} do not form one stack; "
                                  f"pick one with layer= ({gru.name!r} has {differ}, the layer "
                                  f"below {({k: options[k] for k in differ})})")
        options = these
        if gru.name not in weights:
            raise FormatError(f"the Keras file has no weights for GRU layer {gru.name!r}")
        stacked.append(_layer_weights(gru.name, these, weights[gru.name]))
    direction = "bidirectional" if options["bidirectional"] else (
        "reverse" if options["go_backwards"] else "forward")
    try:
        spec = GRUSpec(tuple(stacked), direction=direction,
                       linear_before_reset=options["reset_after"])
    except ValueError as error:
        raise FormatError(f"the Keras GRU layers {names} are inconsistent: {error}") from None
    return spec, not options["time_major"]
