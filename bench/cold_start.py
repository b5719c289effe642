#!/usr/bin/env python
"""Cold start: a new process to its first S2 result, fastgru against onnxruntime, broken down.

    .venv/bin/python bench/cold_start.py [--rounds 7]

Three runs of the same model (S2's seeded random weights) in each round, each in a fresh
interpreter, taking turns: fastgru.load on the .onnx file, fastgru.load on fastgru's own
.safetensors file, and onnxruntime's session on the .onnx file. Numba's cache is warm (the
script makes one call first), as in a deployed service. Each child reads the wall clock at each
point: the interpreter's first line, numpy imported, the runtime imported, the model loaded, the
first result. The clock stops at the result, not at the process's exit. Medians over the
rounds, in seconds, and each fastgru total over onnxruntime's (issue 30's goal: within 3.5x).

fastgru's modules are byte-compiled first, as `pip install` leaves an installed package's (and
numba's and onnxruntime's here): otherwise an editable install under PYTHONDONTWRITEBYTECODE=1,
as on this project's machines, compiles every module from source at each start.

Whether SciPy is importable is printed: Numba imports it at its own import where it is
installed. To measure with SciPy on a machine without it, put a folder holding it on
PYTHONPATH (`pip install --target DIR scipy`); the children inherit it.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import sys, time
start = time.time()
import numpy as np
numpy_ready = time.time()
x = np.zeros([int(n) for n in sys.argv[3:]], np.float32)
if sys.argv[1].startswith("fastgru"):
    import fastgru
    imported = time.time()
    model = fastgru.load(sys.argv[2])
    built = time.time()
    model(x)
else:  # written out, not fastgru.benchmark's helper: importing fastgru would import Numba
    import onnxruntime as ort
    imported = time.time()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(sys.argv[2], options, providers=["CPUExecutionProvider"])
    built = time.time()
    session.run(None, {"X": x})
done = time.time()
print(start, numpy_ready, imported, built, done, "scipy" in sys.modules)
"""

STEPS = ("interpreter start", "import numpy", "import the runtime", "load the model",
         "first call", "total: start to first result")


def measure(runtime: str, path: str, shape: tuple, cache_dir: str | None = None
            ) -> tuple[list[float], bool]:
    """One fresh process: the seconds of each of STEPS, and whether it imported SciPy."""
    from fastgru.benchmark import thread_env

    env = thread_env(1)
    if cache_dir:
        env["NUMBA_CACHE_DIR"] = cache_dir
    launched = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD, runtime, path, *map(str, shape)],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    marks = [launched, *(float(v) for v in out[:5])]
    steps = [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]
    return steps + [marks[-1] - launched], out[5] == "True"


RUNS = {"fastgru .onnx": ("fastgru", "s2.onnx"),
        "fastgru .safetensors": ("fastgru", "s2.safetensors"),
        "onnxruntime .onnx": ("onnxruntime", "s2.onnx")}
GOAL = 3.5  # issue 30: each fastgru total within this many times onnxruntime's


def first_results(rounds: int, compiles: int = 3) -> str:
    """The breakdown as a Markdown table, and the total with an empty Numba cache."""
    import fastgru
    from fastgru.benchmark import SHAPES, builtin_model

    case = SHAPES["S2"]
    shape = (case.steps, case.batch, case.input_size)
    compileall.compile_dir(os.path.dirname(fastgru.__file__), quiet=1)
    with tempfile.TemporaryDirectory() as folder:
        model = builtin_model(case)
        model.save(os.path.join(folder, "s2.safetensors"))
        model.to_onnx(os.path.join(folder, "s2.onnx"))
        paths = {run: os.path.join(folder, file) for run, (_, file) in RUNS.items()}
        measure("fastgru", paths["fastgru .onnx"], shape)  # kernels cached, as in a service
        rows = {run: [] for run in RUNS}
        scipy = False
        for _ in range(rounds):
            for run, (runtime, _) in RUNS.items():
                steps, scipy_loaded = measure(runtime, paths[run], shape)
                rows[run].append(steps)
                scipy = scipy or scipy_loaded
        compiling = [measure("fastgru", paths["fastgru .safetensors"], shape,
                             os.path.join(folder, f"cache{i}"))[0][-1] for i in range(compiles)]
    medians = {run: [statistics.median(r[k] for r in rows[run]) for k in range(len(STEPS))]
               for run in RUNS}
    lines = [f"{case.label}, 1 thread, Numba's cache warm; medians of {rounds} fresh processes "
             f"per run, in seconds; SciPy installed (Numba imports it): "
             f"{'yes' if scipy else 'no'}; fastgru's modules byte-compiled.", "",
             f"| step | {' | '.join(RUNS)} |", "|---|" + "---|" * len(RUNS)]
    for k, step in enumerate(STEPS):
        lines.append(f"| {step} | {' | '.join(f'{medians[run][k]:.3f}' for run in RUNS)} |")
    base = medians["onnxruntime .onnx"][-1]
    ratios = [f"{medians[run][-1] / base:.2f}" for run in RUNS]
    lines.append(f"| total / onnxruntime's (goal: at most {GOAL}) | {' | '.join(ratios)} |")
    if compiling:
        lines += ["", f"With an empty Numba cache (every kernel compiles; median of {compiles}): "
                      f"{statistics.median(compiling):.2f} s to fastgru's first result."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compiles", type=int, default=3,
                        help="fresh processes timed with an empty Numba cache (0: none)")
    args = parser.parse_args()
    print(first_results(args.rounds, args.compiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
