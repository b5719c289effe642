"""``fastgru bench``: fastgru timed against its peers (fastgru.benchmark), on the benchmark
shapes or the user's model file."""

from __future__ import annotations

import argparse

from fastgru.benchmark import SHAPES, case_for_model, run, table
from fastgru.benchmark.peers import RUNTIMES, available, package
from fastgru.commands.common import (check_sizes, check_threads, load_options, open_model,
                                     values_per_step)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="a model file; default: the built-in shapes")
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help="built-in shapes to run (default: all of S1-S6)")
    parser.add_argument("--batch", type=int, default=1, help="batch size for MODEL (default 1)")
    parser.add_argument("--seq", type=int, default=100, help="steps for MODEL (default 100)")
    parser.add_argument("--vs", default="onnxruntime",
                        help="comma-separated peers among fastgru-bf16,fastgru-int8,onnxruntime,"
                             "torch,torch-int8,openvino,openvino-f32 (default onnxruntime)")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="timing budget per measurement (default 1.0)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each runtime, taking turns in fresh processes; the table "
                             "gives the median over rounds (default 1). On a machine whose speed "
                             "moves between processes, compare with 3 or more")


def _thread_counts(threads: str) -> list[int]:
    try:
        counts = [int(t) for t in threads.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ValueError(f"--threads takes comma-separated positive integers, got {threads!r}")
    return counts


def cmd_bench(args) -> int:
    """Prints the table; bad arguments raise (status 2)."""
    check_threads(args.threads)
    if args.model:
        check_sizes(args.batch, args.seq, values_per_step(open_model(args.model, args)))
    peers = [p for p in args.vs.split(",") if p]
    bad = [p for p in peers if p not in RUNTIMES[1:]]
    if bad:
        raise ValueError(f"unknown peer(s) {bad}; choose from {list(RUNTIMES[1:])}")
    missing = [p for p in peers if not available(p)]
    if missing:
        packages = sorted({package(p) for p in missing})
        raise ImportError(f"{', '.join(packages)} is not installed: "
                          f"pip install {' '.join(packages)}")
    threads = _thread_counts(args.threads)
    if args.rounds < 1:
        raise ValueError(f"--rounds must be positive, got {args.rounds}")
    if args.model:
        cases = [case_for_model(args.model, args.batch, args.seq, load_options(args))]
    else:
        unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
        cases = [SHAPES[s] for s in args.shapes.split(",")]
    records = run(cases, ["fastgru", *peers], threads, args.seconds, args.rounds)
    print(table(records, cases))
    return 0
