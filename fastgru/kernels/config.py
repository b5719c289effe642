"""Compile options and the threading guard shared by every kernel.

fastmath is limited to flags that keep NaN and inf semantics ("nnan" and "ninf" are left out), so a
NaN in one batch row propagates inside that row instead of being optimized into garbage.
"""

from __future__ import annotations

import contextlib
import threading

import numba

FASTMATH = {"contract", "nsz", "arcp", "afn"}
JIT_OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=FASTMATH)

_guard_lock = threading.Lock()
_guard: contextlib.AbstractContextManager | None = None


def parallel_guard() -> contextlib.AbstractContextManager:
    """A context manager to hold while a parallel kernel runs.

    Numba's TBB and OpenMP layers accept concurrent parallel launches from many Python threads;
    its workqueue layer aborts the process instead. We keep Numba's default choice (TBB, then
    OpenMP, then workqueue, or whatever NUMBA_THREADING_LAYER forces) and serialize parallel calls
    only when the layer that was loaded is workqueue.
    """
    global _guard
    if _guard is None:
        with _guard_lock:
            if _guard is None:
                from numba.np.ufunc import parallel

                parallel._launch_threads()  # loads the layer Numba would pick at the first prange
                layer = numba.threading_layer()
                _guard = threading.Lock() if layer == "workqueue" else contextlib.nullcontext()
    return _guard
