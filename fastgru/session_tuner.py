"""Which plan an InferenceSession runs for an input signature: timed on the first calls, then kept.

A session has two plans that compute the same graph: "staged" (the GRUs by fastgru, the rest by
onnxruntime, in stages) and "onnxruntime" (onnxruntime alone on the whole graph). Neither is the
faster everywhere: the staged plan wins where the GRUs take the time, onnxruntime where each
stage boundary costs more than fastgru wins on the GRU (one frame at a time). As cuDNN's
benchmark mode and onnxruntime's tunable ops do, the tuner times both on the first calls of each
input signature (the feeds' shapes and dtypes) and keeps the faster one:

    blocks of `block` timed calls of each plan in turn, the staged plan first, each plan's first
    block led by one call that is not timed (it warms the plan: onnxruntime's first call builds
    its session), until each plan has `calls` timings and either `seconds` of them or `most`
    timings; the lower median wins.

Blocks rather than strict alternation, and the staged plan timed before onnxruntime's session
runs at all: onnxruntime's idle workers spin for a while after a run and slow the staged calls
that follow, which only the first calls of a later block pay (the median ignores them). Timed
in alternating blocks of 4 after onnxruntime's warm-up, the staged plan lost at two threads on
every network of bench/whole_models.py, and onnxruntime was kept where the staged plan runs
1.1-1.6x faster (bench/RESULTS.md, "Whole networks", 2026-12-07).

The signatures remembered are bounded (least recently used first out). All changes are made
under one lock (sessions are called from many threads at once); a call whose signature has its
plan reads it without the lock, as a single dict lookup, for 0.3 µs instead of 1.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

PLANS = ("staged", "onnxruntime")
CHOICES = ("auto", *PLANS)


class _Trial:
    """One signature: the plan of the block being handed out and the calls left in it, the
    plans warmed, timings per plan, and the choice once made."""

    __slots__ = ("plan", "left", "warmed", "times", "choice")

    def __init__(self, block: int) -> None:
        self.plan, self.left, self.warmed = PLANS[0], block + 1, set()
        self.times: dict[str, list[float]] = {plan: [] for plan in PLANS}
        self.choice: str | None = None


class PlanTuner:
    """Chooses a plan per input signature from the times of the first calls.

    Parameters
    ----------
    calls : int
        Timed calls of each plan at least before choosing.
    seconds : float
        Time measured per plan after which `calls` timings suffice; until then up to `most`.
    most : int
        Timed calls per plan at most.
    block : int
        Consecutive calls of one plan while timing.
    signatures : int
        Signatures remembered; the least recently used is forgotten beyond it (and timed again
        if it comes back).
    clock : callable
        Seconds, monotonic (time.perf_counter); tests give their own.
    """

    def __init__(self, *, calls: int = 4, seconds: float = 0.005, most: int = 32,
                 block: int = 16, signatures: int = 32, clock=time.perf_counter) -> None:
        if calls < 1 or most < calls or block < 1 or signatures < 1:
            raise ValueError(f"PlanTuner needs 1 <= calls <= most, block >= 1 and signatures "
                             f">= 1, got calls={calls}, most={most}, block={block}, "
                             f"signatures={signatures}")
        self.calls, self.seconds, self.most, self.block = calls, seconds, most, block
        self.signatures, self.clock = signatures, clock
        self._trials: OrderedDict = OrderedDict()  # signature -> _Trial, most recent last
        self._chosen: dict = {}  # signature -> plan, for those chosen (read without the lock)
        self._lock = threading.Lock()

    def next(self, signature) -> tuple[str, bool]:
        """(plan, timed): the plan this call runs, and whether to time it and `record` it."""
        choice = self._chosen.get(signature)  # kept: no lock (each dict operation is atomic)
        if choice is not None:
            try:
                self._trials.move_to_end(signature)
            except KeyError:  # another thread forgot it meanwhile
                pass
            return choice, False
        with self._lock:
            trial = self._trials.get(signature)
            if trial is None:
                trial = self._trials[signature] = _Trial(self.block)
                if len(self._trials) > self.signatures:
                    self._chosen.pop(self._trials.popitem(last=False)[0], None)
            else:
                self._trials.move_to_end(signature)
            if trial.choice is not None:
                return trial.choice, False
            if trial.left == 0:  # the next block: the other plan's
                trial.plan = PLANS[1 - PLANS.index(trial.plan)]
                trial.left = self.block + (trial.plan not in trial.warmed)
            trial.left -= 1
            plan, timed = trial.plan, trial.plan in trial.warmed
            trial.warmed.add(plan)
            return plan, timed

    def record(self, signature, plan: str, seconds: float) -> None:
        """One timed call's duration; chooses once both plans have enough."""
        with self._lock:
            trial = self._trials.get(signature)
            if trial is None or trial.choice is not None:
                return  # forgotten meanwhile, or chosen by another thread's record
            trial.times[plan].append(seconds)
            if all(len(t) >= self.most or (len(t) >= self.calls and sum(t) >= self.seconds)
                   for t in trial.times.values()):
                medians = {p: _median(t) for p, t in trial.times.items()}
                trial.choice = min(PLANS, key=lambda p: medians[p])  # a tie: staged
                self._chosen[signature] = trial.choice

    def chosen(self) -> dict:
        """{signature: plan, or None while still timing}, least recently used first."""
        with self._lock:
            return {s: trial.choice for s, trial in self._trials.items()}

    def choice(self, signature) -> str | None:
        """The plan kept for `signature`, or None (not seen, or still timing)."""
        with self._lock:
            trial = self._trials.get(signature)
            return None if trial is None else trial.choice


def _median(times: list[float]) -> float:
    ordered = sorted(times)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
