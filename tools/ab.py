#!/usr/bin/env python
"""Time built-in shapes on two versions of fastgru, each call in its own process, alternating.

    python tools/ab.py --old HEAD~1 [--new .] [--shapes S2,S3] [--dtype bfloat16 --path widen]
                       [--threads 1] [--rounds 3] [--seconds 0.5]

--old and --new are source trees (folders holding fastgru/) or git revisions of this
repository, exported to a temporary folder. Every round runs each shape once per version, old
then new, each in a fresh process that imports fastgru from its tree; each process prints the
median of its calls after warm-up. The table gives each version's medians across rounds and the
ratio of their medians (new / old below 1: new is faster). On a shared machine only such
alternating rounds in one run compare; a process's first call compiles or loads the kernels
and is not timed. The last column compares each version's fastest round: where the machine's
speed moves in clusters from one process to the next (the lent Xeon ran S4 in 58-61 ms in some
processes and 72-95 in others, whatever the version), the medians follow the clusters each
version's rounds fell in, and the fastest rounds compare the versions in the same state.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from statistics import median

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = """
import sys, time
tree, shape, dtype, path, threads, seconds = sys.argv[1:7]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, tree)
import numba, numpy as np
numba.set_num_threads(int(threads))
import fastgru
from fastgru.benchmark import SHAPES, builtin_model
assert fastgru.__file__.startswith(tree), fastgru.__file__
case = SHAPES[shape]
import inspect
options = {} if path == "default" else {"kernel_path": path}
parameters = inspect.signature(fastgru.GRU).parameters
if options and "kernel_path" not in parameters and "bf16_path" in parameters:
    options = {"bf16_path": path}  # a tree from before int8 shared the argument
elif options and "kernel_path" not in parameters:
    # a tree from before the variant was an argument: its module global, the only way it had
    try:
        from fastgru import _packed as packing
    except ImportError:  # a tree from before the packed weights had their own module
        from fastgru import _model as packing
    packing.BF16_PATH = options.pop("kernel_path")
model = fastgru.GRU(builtin_model(case).spec, dtype=dtype, **options)
x = np.random.default_rng(1).standard_normal((case.steps, case.batch, case.input_size))
x = x.astype(np.float32)
model(x)
times, end = [], time.perf_counter() + float(seconds)
while time.perf_counter() < end or len(times) < 5:
    start = time.perf_counter()
    model(x)
    times.append(time.perf_counter() - start)
print(np.median(times) * 1e6)
"""


def source_tree(version: str, scratch: str) -> str:
    """The folder holding fastgru/ for `version`: itself when it is one, else a git revision
    exported into scratch."""
    if os.path.isdir(os.path.join(version, "fastgru")):
        return os.path.abspath(version)
    folder = os.path.join(scratch, version.replace("/", "_").replace("~", "-"))
    done = subprocess.run(["git", "-C", os.path.dirname(HERE), "archive", version, "fastgru"],
                          capture_output=True)
    if done.returncode:
        raise SystemExit(f"{version!r} is neither a folder holding fastgru/ nor a git revision "
                         f"of this repository: {done.stderr.decode().strip()}")
    archive = done.stdout
    os.makedirs(folder)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return folder


def time_once(tree: str, shape: str, args) -> float:
    done = subprocess.run([sys.executable, "-c", CHILD, tree, shape, args.dtype, args.path,
                           str(args.threads), str(args.seconds)],
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(f"{tree} {shape}: {done.stderr.strip()[-2000:]}")
    return float(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="a source tree or a git revision")
    parser.add_argument("--new", default=os.path.dirname(HERE),
                        help="a source tree or a git revision (default: this checkout)")
    parser.add_argument("--shapes", default="S2,S3,S4,S5,S6")
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "float64", "bfloat16", "int8"])
    parser.add_argument("--path", default="default",
                        help="bfloat16 path (widen, dot, tiles) or int8 path (widen, vnni), passed "
                             "as GRU(..., kernel_path=) "
                             "(default: the CPU's fastest)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        trees = {name: source_tree(getattr(args, name), scratch) for name in ("old", "new")}
        times = {(name, shape): [] for name in trees for shape in shapes}
        for round_ in range(args.rounds):
            for shape in shapes:
                for name, tree in trees.items():
                    times[name, shape].append(time_once(tree, shape, args))
                print(f"round {round_ + 1} {shape}: old {times['old', shape][-1]:.0f} µs, "
                      f"new {times['new', shape][-1]:.0f} µs", file=sys.stderr, flush=True)
    print(f"{args.dtype} ({args.path}), {args.threads} thread(s), {args.rounds} rounds: "
          f"old {args.old}, new {args.new}\n")
    print("| shape | old µs | new µs | new / old | new / old, fastest rounds |\n"
          "|---|---|---|---|---|")
    for shape in shapes:
        old, new = times["old", shape], times["new", shape]
        print(f"| {shape} | {', '.join(f'{t:.0f}' for t in old)} | "
              f"{', '.join(f'{t:.0f}' for t in new)} | {median(new) / median(old):.3f} | "
              f"{min(new) / min(old):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
