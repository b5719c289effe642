"""fastgru: trained GRU networks on the CPU, fast, with Numba kernels."""

from fastgru._load import load
from fastgru._model import GRU, Stream
from fastgru._weights import GRUSpec, LayerWeights
from fastgru.errors import FormatError

__all__ = ["GRU", "FormatError", "GRUSpec", "LayerWeights", "Stream", "load"]
__version__ = "0.1.0"
