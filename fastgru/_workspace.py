"""Scratch buffers reused across calls; concurrent calls each take their own."""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np

from fastgru._fork import after_fork_in_child
from fastgru.kernels.cpu import empty_aligned

# The idle workspaces a model keeps hold at most this many bytes together; a workspace beyond
# that (a very long or very wide call) is freed after its call: one T=200,000 call would
# otherwise pin hundreds of MB to the model for its lifetime. Large enough for the scratch of a
# batch of 256 sequences of 100 steps at H=256, whose reallocation at every call (page faults
# over fresh memory) showed in the call's time (bench/RESULTS.md, "Thresholds in the code").
KEEP_BYTES = 256 << 20

# Entries a workspace keeps in `derived`: enough for the shapes of a steady load.
DERIVED_KEPT = 64


class Workspace:
    """Named flat buffers that grow to the largest shape asked for and are then reused."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self._buffers: dict[str, np.ndarray] = {}
        self.nbytes = 0  # of the buffers together, kept as they change (read at every call)
        # what callers derive from the buffers (views, argument tuples), dropped whenever a
        # buffer is replaced, so that no replaced buffer stays alive (and uncounted) through it
        self._derived: dict = {}

    def get(self, name: str, shape: tuple[int, ...], dtype=None) -> np.ndarray:
        """A C-contiguous array of `shape` backed by buffer `name`, starting on a cache line;
        contents are undefined.

        The buffer holds the workspace's dtype unless `dtype` names another."""
        size = math.prod(shape)
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            self.nbytes -= 0 if buffer is None else buffer.nbytes
            buffer = empty_aligned((size,), dtype)
            self._buffers[name] = buffer
            self.nbytes += buffer.nbytes
            self._derived.clear()
        return buffer[:size].reshape(shape)

    def derived(self, key, make):
        """make()'s result, made once and kept under `key` until a buffer is replaced: for views
        of the buffers and argument tuples a call would otherwise build again. At most
        DERIVED_KEPT are kept (a service calling with ever new shapes must not grow)."""
        found = self._derived.get(key)
        if found is None:
            found = make()
            if len(self._derived) >= DERIVED_KEPT:
                self._derived.clear()
            self._derived[key] = found
        return found


class WorkspacePool:
    """Hands each concurrent caller its own Workspace and keeps a few idle ones for reuse."""

    def __init__(self, dtype: np.dtype, keep: int = 4) -> None:
        self._dtype = dtype
        self._keep = keep
        self._idle: list[tuple[Workspace, int]] = []
        self._idle_bytes = 0  # their nbytes together, as they were handed back
        self._lock = threading.Lock()
        _POOLS.add(self)

    def take(self) -> Workspace:
        """A workspace for this caller alone; hand it back with `give` when done."""
        with self._lock:
            if self._idle:
                workspace, size = self._idle.pop()
                self._idle_bytes -= size
                return workspace
        return Workspace(self._dtype)

    def give(self, workspace: Workspace) -> None:
        size = workspace.nbytes
        with self._lock:
            if len(self._idle) < self._keep and self._idle_bytes + size <= KEEP_BYTES:
                self._idle.append((workspace, size))
                self._idle_bytes += size

    @property
    def kept_bytes(self) -> int:
        """Bytes held by the idle workspaces."""
        with self._lock:
            return self._idle_bytes


_POOLS: weakref.WeakSet = weakref.WeakSet()


@after_fork_in_child
def _fresh_locks() -> None:
    for pool in list(_POOLS):
        pool._lock = threading.Lock()
