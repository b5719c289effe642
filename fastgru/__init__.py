"""fastgru: trained GRU networks on the CPU, fast, with Numba kernels."""

from fastgru._load import load
from fastgru._model import GRU
from fastgru._streams import Stream, StreamBatch
from fastgru._weights import GRUSpec, LayerWeights
from fastgru.session import InferenceSession
from fastgru.errors import FormatError

__all__ = ["GRU", "FormatError", "GRUSpec", "InferenceSession", "LayerWeights", "Stream",
           "StreamBatch", "load", "warmup"]


def warmup(dtypes=("float32",)) -> None:
    """Compile (or load from the on-disk cache) fastgru's kernels for these dtypes, ahead of the
    first request: for every model shape, since the kernels depend only on the dtype."""
    import numpy as np

    for dtype in dtypes:
        layer = LayerWeights(np.zeros((1, 3, 1)), np.zeros((1, 3, 1)), np.zeros((1, 6)))
        GRU(GRUSpec((layer,)), dtype=dtype).prepare()
__version__ = "0.1.0"
