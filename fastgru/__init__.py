"""fastgru: trained GRU networks on the CPU, fast, with Numba kernels."""

from fastgru._model import GRU, Stream
from fastgru._weights import GRUSpec, LayerWeights

__all__ = ["GRU", "GRUSpec", "LayerWeights", "Stream"]
__version__ = "0.1.0"
