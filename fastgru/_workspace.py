"""Scratch buffers reused across calls; concurrent calls each take their own."""

from __future__ import annotations

import math
import threading

import numpy as np


class Workspace:
    """Named flat buffers that grow to the largest shape asked for and are then reused."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype=None) -> np.ndarray:
        """A C-contiguous array of `shape` backed by buffer `name`; contents are undefined.

        The buffer holds the workspace's dtype unless `dtype` names another."""
        size = math.prod(shape)
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = np.empty(size, dtype=dtype)
            self._buffers[name] = buffer
        return buffer[:size].reshape(shape)


class WorkspacePool:
    """Hands each concurrent caller its own Workspace and keeps a few idle ones for reuse."""

    def __init__(self, dtype: np.dtype, keep: int = 4) -> None:
        self._dtype = dtype
        self._keep = keep
        self._idle: list[Workspace] = []
        self._lock = threading.Lock()

    def take(self) -> Workspace:
        """A workspace for this caller alone; hand it back with `give` when done."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return Workspace(self._dtype)

    def give(self, workspace: Workspace) -> None:
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(workspace)
