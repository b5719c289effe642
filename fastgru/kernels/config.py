"""Compile options and the threading guard shared by every kernel.

fastmath is limited to flags that keep NaN and inf semantics ("nnan" and "ninf" are left out), so a
NaN in one batch row propagates inside that row instead of being optimized into garbage.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading

import numba

FASTMATH = {"contract", "nsz", "arcp", "afn"}
JIT_OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=FASTMATH)



def _make_tbb_loadable() -> None:
    """Load the TBB library of the `tbb` wheel by path, so Numba can pick its TBB layer.

    pip puts libtbb.so.12 in <prefix>/lib, where the dynamic loader does not look; Numba then
    falls back to GNU OpenMP, whose threads make every fork()ed child abort ("fork() called from
    a process already using GNU OpenMP") and so break pre-forking servers. TBB is both
    thread-safe and fork-safe. Without the wheel (or off Linux) nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        path = os.path.join(prefix, "lib", "libtbb.so.12")
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                pass
            return


_make_tbb_loadable()

_guard_lock = threading.Lock()
_guard: contextlib.AbstractContextManager | None = None


def parallel_guard() -> contextlib.AbstractContextManager:
    """A context manager to hold while a parallel kernel runs.

    Numba's TBB and OpenMP layers accept concurrent parallel launches from many Python threads;
    its workqueue layer aborts the process instead. We keep Numba's default choice (TBB, made
    loadable above, then OpenMP, then workqueue, or whatever NUMBA_THREADING_LAYER forces) and
    serialize parallel calls only when the layer that was loaded is workqueue.
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


def _after_fork_in_child() -> None:
    # The workqueue guard may have been held by a parent thread inside a call at the fork: the
    # child's first call would wait for it forever. Children start with a fresh one.
    global _guard, _guard_lock
    _guard_lock = threading.Lock()
    if isinstance(_guard, type(threading.Lock())):
        _guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
