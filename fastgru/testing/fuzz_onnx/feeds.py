"""The feeds a case is run with: random inputs at each size, and the feeds only the session
is given (feeds onnxruntime refuses, sequences of length 0)."""

from __future__ import annotations

import numpy as np

from .case import Case, resolve


def make_feeds(case: Case, size: dict, rng) -> dict:
    """Random feeds for every graph input at `size`; lengths in [1, T]."""
    feeds = {}
    for name, info in case.inputs.items():
        shape = resolve(info.shape, size)
        if info.default is not None and rng.random() < 0.5:
            continue  # the graph's default value
        if info.role == "lens":
            T = size["T"]
            value = np.full(shape, T) if rng.random() < 0.3 else rng.integers(1, T + 1, shape)
        elif info.role == "state":
            value = 0.8 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape)
        feeds[name] = np.asarray(value).astype(info.dtype)
    return feeds


def session_feeds(case: Case, runs: list, rng) -> list:
    """[(label, feeds)] for the session only: feeds onnxruntime refuses (a state of another
    batch size than X, lengths past T) and lengths of 0 (onnxruntime's Y_h is 0 for such rows,
    where fastgru.GRU keeps the initial state: only the session promises onnxruntime's)."""
    out = []
    for label, size, feeds, _ in runs:
        B, T = size["B"], size["T"]
        states = [n for n, i in case.inputs.items() if i.role == "state" and n in feeds and
                  i.shape[0 if i.layout else 1] == "B"]
        lens = [n for n, i in case.inputs.items() if i.role == "lens" and n in feeds]

        def rows(name, b, feeds=feeds):  # the state `name` with b rows
            axis = 0 if case.inputs[name].layout else 1
            return np.ascontiguousarray(np.take(feeds[name], range(b), axis=axis))

        if states and B > 1:
            bad = dict(feeds)
            bad[states[0]] = rows(states[0], 1)
            out.append((f"{label}, {states[0]} of batch 1", bad))
            if B > 2:
                bad = dict(feeds)
                bad[states[-1]] = rows(states[-1], B - 1)
                out.append((f"{label}, {states[-1]} of batch {B - 1}", bad))
        if lens:
            bad = dict(feeds)
            bad[lens[0]] = feeds[lens[0]].copy()
            bad[lens[0]][0] = T + 1
            out.append((f"{label}, sequence_lens past T", bad))
            zero = dict(feeds)
            zero[lens[0]] = feeds[lens[0]].copy()
            zero[lens[0]][rng.integers(0, B)] = 0
            out.append((f"{label}, a sequence of length 0", zero))
        # sizes the graph does not run with: another batch or length than it fixes, a length
        # below its constant sequence_lens
        for symbol, fixed in case.fixed.items():
            other = dict(size, **{symbol: fixed + 1 if fixed < 4 else fixed - 1})
            out.append((f"{symbol}={other[symbol]}, which the graph fixes at {fixed}",
                        make_feeds(case, other, rng)))
        for symbol, least in case.least.items():
            if least > 1 and symbol not in case.fixed:
                other = dict(size, **{symbol: least - 1})
                out.append((f"{symbol}={least - 1}, below the graph's least {least}",
                            make_feeds(case, other, rng)))
        break  # at the first size onnxruntime runs
    return out
