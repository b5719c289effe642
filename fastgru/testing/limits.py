"""A time limit for one fuzz case, shared by the ONNX and Keras fuzzers."""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["CaseTimeout", "time_limit"]


class CaseTimeout(BaseException):
    """A case ran past its time limit (BaseException: no entry point's handler catches it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """CaseTimeout past `seconds` (in the main thread, where signals arrive, and where the
    platform has setitimer; elsewhere no limit). A hang inside a compiled kernel is only seen
    when it returns: tools/fuzz.py runs cases in a child process it can kill."""
    if threading.current_thread() is not threading.main_thread() or \
            not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise CaseTimeout(f"the case ran past {seconds:g} s")

    before = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
