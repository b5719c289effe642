"""Stateful step-by-step inference: Stream (a fixed batch) and StreamBatch (clients that come
and go). Both belong to one caller at a time; the model they step is shared and immutable."""

from __future__ import annotations

import itertools
import threading

import numba
import numpy as np

from fastgru._boundary import as_float_array, check_shape
from fastgru._execution import front_input, stream_kernel_args
from fastgru._packed import PackedWeights
from fastgru._workspace import Workspace
from fastgru.kernels import gru as kernels


def _check_streamable(packed: PackedWeights) -> None:
    if packed.direction != "forward":
        raise ValueError(f"streams need a forward (unidirectional) model, this one is "
                         f"{packed.direction}: a {packed.direction} GRU reads the whole sequence")


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _busy(what: str) -> RuntimeError:
    """A second thread stepping the same stream at once would corrupt its state silently: it is
    refused (a stream belongs to one caller at a time)."""
    return RuntimeError(f"this {what} is being stepped by another thread; a {what} belongs to "
                        f"one caller at a time: give each thread its own, or lock around it")


def _start(packed: PackedWeights) -> np.ndarray:
    """Where a stream starts: (num_layers, H), the stored initial state or zeros."""
    if packed.initial_state is not None:
        return packed.initial_state
    return np.zeros((packed.num_layers, packed.hidden_size), packed.dtype)


def _fits(array, shape, dtype) -> bool:
    """Whether array is already what the kernel takes (the common case, checked cheaply)."""
    if not (type(array) is np.ndarray and array.shape == shape and array.dtype == dtype):
        return False
    flags = array.flags
    return flags.c_contiguous and flags.aligned


def _check_out(out, expected, dtype):
    """out itself when the kernel can write into it, a new array for None, else a ValueError."""
    if out is None:
        return np.empty(expected, dtype=dtype)
    if _fits(out, expected, dtype) and out.flags.writeable:
        return out
    got = (f"{type(out).__name__}" if not isinstance(out, np.ndarray) else
           f"shape {out.shape}, dtype {out.dtype}, "
           f"{'C-contiguous' if out.flags.c_contiguous else 'not C-contiguous'}"
           f"{'' if out.flags.aligned else ', not aligned'}")
    raise ValueError(f"out must be a writable, aligned, C-contiguous {dtype.name} array of "
                     f"shape {expected}, got {got}")


class Stream:
    """Step-by-step inference with the state carried between calls. One caller at a time.

    ``h`` has shape (num_layers, batch_size, H); it starts at the model's stored initial state
    (zeros without one), and `reset` returns to it. Reading it gives a copy (a snapshot);
    assigning it restores one.
    """

    def __init__(self, packed: PackedWeights, batch_size: int = 1) -> None:
        _check_streamable(packed)
        B = _positive(batch_size, "batch_size")
        self._packed = packed
        self._h = np.zeros((packed.num_layers, B, packed.hidden_size), dtype=packed.dtype)
        self.reset()
        # made once: a step allocates nothing and passes the kernel ready-made arguments
        self._args = (self._h, *stream_kernel_args(packed, B, Workspace(packed.dtype)))
        self._x_shape = (B, packed.input_size)
        self._out_shape = (B, packed.hidden_size)
        self._passes = 0  # over the weights so far: the kernel alternates their order
        self._kernel = _entry_point(kernels.gru_stream_step, np.empty(self._x_shape, packed.dtype),
                                    *self._args, 0, np.empty(self._out_shape, packed.dtype))
        self._stepping = threading.Lock()

    @property
    def batch_size(self) -> int:
        return self._h.shape[1]

    @property
    def h(self) -> np.ndarray:
        """A copy of the state, shape (num_layers, batch_size, H)."""
        return self._h.copy()

    @h.setter
    def h(self, value) -> None:
        value = as_float_array(value, self._packed.dtype, "h")
        check_shape(value, self._h.shape, "h", " (num_layers, batch_size, hidden_size)")
        self._h[...] = value

    def reset(self) -> None:
        """Set the state back to the model's stored initial state (zeros without one)."""
        self._h[...] = _start(self._packed)[:, None, :]

    def step(self, x_t, out=None) -> np.ndarray:
        """Advance every layer by one step.

        Parameters
        ----------
        x_t : array_like, shape (batch_size, D)
        out : ndarray, shape (batch_size, H), C-contiguous, the model's dtype, optional
            Receives the top layer's output; with it the step allocates nothing.

        Returns
        -------
        ndarray, shape (batch_size, H): the top layer's new state (``out`` when given).
        """
        dtype = self._packed.dtype
        if not _fits(x_t, self._x_shape, dtype):
            x_t = as_float_array(x_t, dtype, "x_t")
            check_shape(x_t, self._x_shape, "x_t", " (batch_size, input_size)")
            if not x_t.flags.aligned:  # from a byte buffer at an odd offset
                x_t = x_t.copy()
        out = _check_out(out, self._out_shape, dtype)
        if self._packed.front is not None:
            x_t = front_input(self._packed, x_t)
        if not self._stepping.acquire(blocking=False):  # cheaper than a context manager
            raise _busy("Stream")
        try:
            self._passes = self._kernel(x_t, *self._args, self._passes, out)
        finally:
            self._stepping.release()
        return out


def _entry_point(kernel, *args):
    """kernel's compiled code for arguments of exactly the types of `args`, to call without
    the dispatcher, whose typing of a stream step's 16 arguments is a tenth of the step
    (bench/RESULTS.md, "Thresholds in the code").
    It checks no types, so callers must pass arrays of exactly those types (`_fits`,
    `_check_out`), which the kernel only reads, or writes in place."""
    return kernel.compile(tuple(numba.typeof(a) for a in args))


class StreamBatch:
    """Independent client streams stepped together: one kernel call for every client's frame.

    A server adds a client when a connection opens (`add`), steps whichever clients sent a
    frame (`step(ids, x)`), and removes the client when it leaves (`remove`); each client keeps
    its own state, which `state` reads and `set_state` restores. One caller at a time.
    """

    def __init__(self, packed: PackedWeights, capacity: int = 16) -> None:
        _check_streamable(packed)
        self._packed = packed
        capacity = _positive(capacity, "capacity")
        self._states = np.zeros((packed.num_layers, capacity, packed.hidden_size), packed.dtype)
        self._slots: dict[int, int] = {}
        self._free = list(range(capacity - 1, -1, -1))
        self._ids = itertools.count()
        self._workspace = Workspace(packed.dtype)
        self._passes = 0  # as Stream's
        self._stepping = threading.Lock()

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, client) -> bool:
        return client in self._slots

    def add(self, h=None) -> int:
        """A new client, starting from state h (num_layers, H), else from the model's stored
        initial state (zeros without one); returns its id."""
        start = _start(self._packed) if h is None else self._checked_state(h)  # before any slot
        if not self._free:
            self._grow()
        slot = self._free.pop()
        client = next(self._ids)
        self._slots[client] = slot
        self._states[:, slot] = start
        return client

    def remove(self, client: int) -> None:
        self._slot_of(client)  # a clear KeyError for unknown clients
        self._free.append(self._slots.pop(client))

    def state(self, client: int) -> np.ndarray:
        """A copy of one client's state, shape (num_layers, H)."""
        return self._states[:, self._slot_of(client)].copy()

    def set_state(self, client: int, h) -> None:
        self._states[:, self._slot_of(client)] = self._checked_state(h)

    def _checked_state(self, h) -> np.ndarray:
        m = self._packed
        h = as_float_array(h, m.dtype, "h")
        check_shape(h, (m.num_layers, m.hidden_size), "h", " (num_layers, hidden_size)")
        return h

    def step(self, clients, x, out=None) -> np.ndarray:
        """Advance the given clients by one frame each.

        Parameters
        ----------
        clients : sequence of int, length n, no repeats
        x : array_like, shape (n, D): row i is clients[i]'s frame
        out : ndarray, shape (n, H), optional

        Returns
        -------
        ndarray, shape (n, H): row i is clients[i]'s top-layer output.
        """
        m = self._packed
        slots = [self._slot_of(c) for c in clients]
        if len(set(slots)) != len(slots):
            raise ValueError("a client may appear only once per step")
        n, L, H = len(slots), m.num_layers, m.hidden_size
        x = as_float_array(x, m.dtype, "x")
        check_shape(x, (n, m.input_size), "x", " (one row per client, input_size)")
        out = _check_out(out, (n, H), m.dtype)
        if n == 0:
            return out
        if not self._stepping.acquire(blocking=False):
            raise _busy("StreamBatch")
        try:
            h = self._workspace.get("h", (L, n, H))
            np.take(self._states, slots, axis=1, out=h)
            self._passes = kernels.gru_stream_step(
                front_input(m, x), h, *stream_kernel_args(m, n, self._workspace), self._passes,
                out)
            self._states[:, slots] = h
        finally:
            self._stepping.release()
        return out

    def _slot_of(self, client) -> int:
        try:
            return self._slots[client]
        except (KeyError, TypeError):
            raise KeyError(f"no client {client!r} in this StreamBatch") from None

    def _grow(self) -> None:
        old = self._states.shape[1]
        states = np.zeros((self._states.shape[0], 2 * old, self._states.shape[2]),
                          self._states.dtype)
        states[:, :old] = self._states
        self._states = states
        self._free = list(range(2 * old - 1, old - 1, -1))
