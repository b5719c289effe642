"""fastgru: trained GRU networks on the CPU, fast, with Numba kernels."""

from fastgru._load import load
from fastgru._model import GRU
from fastgru._streams import Stream, StreamBatch
from fastgru._weights import GRUSpec, LayerWeights
from fastgru.errors import FormatError

__all__ = ["GRU", "FormatError", "GRUSpec", "InferenceSession", "LayerWeights", "Stream",
           "StreamBatch", "load", "warmup"]


def warmup(dtypes=("float32",), *, clip: bool = False) -> None:
    """Compile (or load from Numba's on-disk cache) fastgru's kernels for these dtypes, now
    rather than in the first request. The kernels depend on the dtype, not on the model's sizes,
    so this serves every model; `clip=True` adds the variant for models with an ONNX clip.

    Progress goes to the "fastgru" logger, the channel the first compilation on a CPU announces
    itself on (a WARNING, shown on stderr unless the application's logging says otherwise; see
    fastgru/kernels/runtime.py): one INFO line per kernel group with its seconds. `fastgru warmup`
    on the command line shows those lines on stderr.
    """
    import logging
    import time

    import numpy as np

    log = logging.getLogger("fastgru")
    layer = LayerWeights(np.zeros((1, 3, 1)), np.zeros((1, 3, 1)), np.zeros((1, 6)))
    groups = [(f"{dtype} kernels" + ("" if bound is None else " with a clip"),
               GRU(GRUSpec((layer,), clip=bound), dtype=dtype))  # every dtype checked first
              for dtype in ((dtypes,) if isinstance(dtypes, str) else dtypes)
              for bound in ((None, 1.0) if clip else (None,))]
    for name, model in groups:
        start = time.perf_counter()
        model.prepare()
        log.info("fastgru warmup: %s ready in %.1f s", name, time.perf_counter() - start)


def __getattr__(name: str):
    """InferenceSession is imported when first asked for: a process that only loads and runs a
    GRU does not pay for the whole-graph machinery at start-up (issue 30's cold start)."""
    if name == "InferenceSession":
        from fastgru.session import InferenceSession

        return InferenceSession
    raise AttributeError(f"module 'fastgru' has no attribute {name!r}")


__version__ = "0.1.0"
