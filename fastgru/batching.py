"""Many sequences of different lengths through one model: sorted by length, in batches whose
padded size stays within a budget. Used by the example service and by fastgru.dask."""

from __future__ import annotations

import numpy as np


def by_length(lengths, budget: int) -> list[np.ndarray]:
    """Indices of the sequences in batches: sorted by length, each batch at most `budget`
    padded frames (its longest length times its count; a longer sequence goes alone),
    shortest first."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = start + 1  # sorted: a batch's padded size is its last length times its count
        while end < len(order) and lengths[order[end]] * (end + 1 - start) <= budget:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def pad(xs, input_size: int, dtype=np.float32, batch_first: bool = False) -> np.ndarray:
    """Sequences (T_i, D) as one zero-padded batch, (T, B, D) or (B, T, D) when batch_first."""
    longest = max((len(x) for x in xs), default=0)
    batch = np.zeros((len(xs), longest, input_size), dtype)
    for b, x in enumerate(xs):
        batch[b, :len(x)] = x
    return batch if batch_first else np.ascontiguousarray(batch.transpose(1, 0, 2))
