"""Turning whatever the caller passed into the arrays the kernels expect, or a clear error."""

from __future__ import annotations

import os

import numpy as np

DTYPES = ("float32", "float64", "bfloat16", "int8")


def resolve_dtype(dtype) -> str:
    """The name of a model's dtype: float32, float64, bfloat16 or int8 (weights stored in
    bfloat16 or int8, everything else in float32)."""
    if isinstance(dtype, str) and dtype in ("bfloat16", "int8"):
        return dtype
    try:
        resolved = None if dtype is None else np.dtype(dtype)  # np.dtype(None) is float64
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return resolved.name


def _detached(value):
    """A torch tensor that requires grad as the tensor of its values (which torch.nn.GRU takes,
    and whose NumPy conversion torch refuses); anything else as it is. Imports no torch."""
    if getattr(value, "requires_grad", False) and hasattr(value, "detach"):
        return value.detach()
    return value


def as_float_array(value, dtype: np.dtype, name: str) -> np.ndarray:
    """C-contiguous array of `dtype` (no copy when `value` already is one)."""
    array = np.asarray(_detached(value))
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got an array of dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=dtype)


def check_shape(array: np.ndarray, expected: tuple, name: str, hint: str = "") -> None:
    if array.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}{hint}, got {array.shape}")


def as_lengths(lengths, batch: int, steps: int) -> np.ndarray:
    """(B,) int64 array of sequence lengths, each in [0, steps]: always a private copy, which
    the kernels index by and another thread cannot change during the call."""
    array = np.asarray(lengths)
    if array.size == 0:  # lengths=[] for an empty batch: NumPy makes it float64
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got an array of dtype {array.dtype}")
    array = np.array(array.reshape(-1) if array.ndim == 0 else array, dtype=np.int64,
                     order="C", copy=True)
    check_shape(array, (batch,), "lengths", " (one length per batch row)")
    if batch and (array.min() < 0 or array.max() > steps):
        raise ValueError(
            f"lengths must lie in [0, {steps}] (the number of steps in x), "
            f"got values from {array.min()} to {array.max()}")
    return array


def memory_bytes() -> int:
    """This machine's physical memory (a bound for what loading may allocate)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this OS: no bound from here
        return 1 << 62
