"""Numba's runtime for every kernel: compile options, the on-disk cache, the threading layer
and the guard it needs.

fastmath is limited to flags that keep NaN and inf semantics ("nnan" and "ninf" are left out), so a
NaN in one batch row propagates inside that row instead of being optimized into garbage.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import sys
import threading
import warnings

import numba
from numba.core import caching
from numba.core.runtime import rtsys

from fastgru._fork import after_fork_in_child

FASTMATH = {"contract", "nsz", "arcp", "afn"}
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_warned: set[str] = set()
# Where fastgru says what it is doing (compiling, warming up). No NullHandler on purpose: the
# first compile on a machine takes long enough that a user thinks the process hung, so its
# WARNING reaches stderr through logging's last-resort handler when the application configured
# no logging, and goes wherever the application's logging goes when it did.
LOG = logging.getLogger("fastgru")
_told_compiling = False


def _say_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"fastgru: {message}", RuntimeWarning, stacklevel=3)


# Public names in recent Numba releases, underscored in older ones
_InTreeLocator = getattr(caching, "InTreeCacheLocator", None) or caching._InTreeCacheLocator
_CacheImpl = getattr(caching, "CacheImpl", None) or caching._CacheImpl


class _ReadOnlyPackageCache(_InTreeLocator):
    """A prebuilt cache in the package's own __pycache__ where that folder is read-only (a
    read-only container image): Numba's locators all want to write, so without this one such a
    cache could not even be read. Tried last, for fastgru's files only."""

    def ensure_cache_path(self):
        if not os.path.isdir(self.get_cache_path()):
            raise OSError(f"no cache folder at {self.get_cache_path()}")

    @classmethod
    def from_function(cls, py_func, py_file):
        if not os.path.abspath(py_file).startswith(_PACKAGE + os.sep):
            return None
        return super().from_function(py_func, py_file)


_CacheImpl._locator_classes.append(_ReadOnlyPackageCache)


def _probe():
    """A function beside the kernels: where Numba would cache them, it could cache this."""


def _can_cache() -> bool:
    try:
        caching.FunctionCache(_probe)
        return True
    except RuntimeError:
        _say_once("no-cache", "no writable or prebuilt cache folder for Numba (the package's "
                              "__pycache__, NUMBA_CACHE_DIR, ~/.cache); kernels are compiled in "
                              "memory in each process, seconds at the first call. Set "
                              "NUMBA_CACHE_DIR to a writable folder to keep them.")
        return False


def _kernel_sources() -> str:
    """A digest of every kernel module's source (this folder's .py files)."""
    digest = hashlib.sha256()
    folder = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()


_KERNEL_SOURCES = _kernel_sources()


class RecoveringCache(caching.FunctionCache):
    """Numba's function cache, except that a cache it cannot read (a damaged index) or write
    (a read-only folder) costs a compilation, never an error: the kernel compiles in memory, a
    damaged index is removed so the next save writes a good one, and the process says so once.

    Entries are also keyed on every kernel module's source: Numba keys them on the function's
    own file only, so a kernel that inlines a helper of another module (gru.py inlines
    bfloat16.round_to_pairs) was loaded from the cache with the helper's old code after the
    helper changed."""

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), _KERNEL_SOURCES)

    def load_overload(self, sig, target_context):
        # Numba asks the cache before it compiles: a miss means a compilation starts now.
        # Numba's own load_overload first refreshes the target context: it imports and installs
        # every typing and lowering registry (most of a cached first call), and initializes
        # Numba's runtime, the one thing rebuilding cached machine code needs. A compilation
        # refreshes the context itself (numba.core.compiler.compile_extra).
        rtsys.initialize(target_context)
        loaded = None  # stays None where the guard below swallows an unreadable cache's error
        with self._guard_against_spurious_io_errors():
            loaded = self._load_overload(sig, target_context)
        if loaded is None:
            _say_compiling(self._cache_path)
        return loaded

    @contextlib.contextmanager
    def _guard_against_spurious_io_errors(self):
        try:
            yield
        except OSError as error:  # a read-only cache folder: keep what compiled in memory
            _say_once("read-only", f"cannot write Numba's cache ({error}); newly compiled "
                                   f"kernels stay in memory")
        except Exception as error:  # unreadable content: recompile, and drop the bad index
            _say_once("damaged", f"Numba's cache for {self._name} could not be read "
                                 f"({type(error).__name__}: {error}); recompiling")
            with contextlib.suppress(OSError):
                os.remove(self._cache_file._index_path)


def _say_compiling(cache_path: str) -> None:
    """Say once per process, before the first kernel compiles, what is happening: a one-time
    cost of this CPU, kept in Numba's cache. Logged, not warned: it is news, not a fault the
    caller should fix, and `-W error` must not turn a first call into an exception."""
    global _told_compiling
    if _told_compiling:
        return
    _told_compiling = True
    from llvmlite import binding

    LOG.warning(
        "fastgru: compiling its kernels for this CPU (%s), once: tens of seconds for each dtype "
        "(about 45 s of CPU time per dtype on an AMD EPYC Zen 4), kept in Numba's cache at %s "
        "so that later processes on this CPU load them in about 0.1 s. Run `fastgru warmup` "
        "(or fastgru.warmup()) ahead of time, e.g. when building an image.",
        binding.get_host_cpu_name(), cache_path)


def recover_caches(namespace: dict) -> None:
    """Give every cached kernel in `namespace` (a module's globals) a RecoveringCache."""
    for value in list(namespace.values()):
        if isinstance(getattr(value, "_cache", None), caching.FunctionCache):
            value._cache.__class__ = RecoveringCache


JIT_OPTIONS = dict(cache=_can_cache(), nogil=True, error_model="numpy", fastmath=FASTMATH)



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


def _import_numpy_support_without_scipy() -> None:
    """Import numba.np.arraymath (which Numba imports at its first compile or cache load)
    without the SciPy import its module code does to check for BLAS: a large part of a cold
    start where SciPy is installed (bench/RESULTS.md, "Cold start, with SciPy installed"),
    spent for np.dot, which fastgru's kernels never call. Whether
    SciPy is there is found without importing it; its BLAS is imported when a function that
    uses np.dot is compiled, as before."""
    import importlib.util

    if "numba.np.arraymath" in sys.modules:
        return
    from numba.np import linalg

    real = linalg.ensure_blas
    have_scipy = importlib.util.find_spec("scipy") is not None

    def check_only():
        if not have_scipy:
            raise ImportError("scipy 0.16+ is required for linear algebra")

    linalg.ensure_blas = check_only
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        linalg.ensure_blas = real


_import_numpy_support_without_scipy()

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


@after_fork_in_child
def _fresh_guard() -> None:
    # The workqueue guard may have been held by a parent thread inside a call at the fork: the
    # child's first call would wait for it forever. Children start with a fresh one.
    global _guard, _guard_lock
    _guard_lock = threading.Lock()
    if isinstance(_guard, type(threading.Lock())):
        _guard = threading.Lock()

