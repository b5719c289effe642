"""Side-by-side timing of fastgru and its peers, each runtime in its own process.

``fastgru bench`` prints a Markdown table for the benchmark shapes of DESIGN.md on a built-in
random model, or for the user's own model file. Three parts:

- ``cases``: what runs (the shapes S1-S6 on seeded random weights, or a model file);
- ``peers``: how each runtime runs it (fastgru, fastgru-bf16, onnxruntime, torch, openvino);
- ``runner``: each measurement in a fresh worker process, medians over rounds, the table.

How close the outputs must be is fastgru.checks', shared with ``fastgru check``.
"""

from fastgru.benchmark.cases import SHAPES, Case, builtin_model, case_for_model
from fastgru.benchmark.peers import RUNTIMES, make_call, onnxruntime_session
from fastgru.benchmark.runner import call_times, median_seconds, run, table, thread_env, worker
from fastgru.checks import random_feeds

__all__ = ["RUNTIMES", "SHAPES", "Case", "builtin_model", "call_times", "case_for_model",
           "make_call", "median_seconds", "onnxruntime_session", "random_feeds", "run", "table",
           "thread_env", "worker"]
