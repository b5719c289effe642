"""What a forked child must redo: locks a parent thread may have held at the fork."""

from __future__ import annotations

import os


def after_fork_in_child(reset):
    """Register `reset` to run in every forked child, where the parent's other threads do not
    exist: a lock one of them held at the fork would stay held forever, and counts of the calls
    they were running would never come down. Returns `reset` (usable as a decorator)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=reset)
    return reset
