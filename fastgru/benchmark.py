"""Side-by-side timing of fastgru and its peers, each runtime in its own process.

``fastgru bench`` prints a Markdown table for the benchmark shapes of DESIGN.md on a built-in
random model, or for the user's own model file. Each measurement runs in a fresh worker process
(onnxruntime's idle threads spin and would distort a shared process), with the thread count fixed
by environment variables before any library loads; the figure that counts is the ratio of medians
measured in one run. onnxruntime runs the graph ``GRU.to_onnx`` writes (one GRU node per layer,
as torch.onnx.export writes it); PyTorch runs an nn.GRU (an nn.GRUCell for the stream step)
holding the same weights. ``fastgru-bf16`` is fastgru with dtype="bfloat16"; ``openvino`` runs the
same ONNX graph as onnxruntime in OpenVINO's default precision (bfloat16 on CPUs with bf16
instructions), ``openvino-f32`` with INFERENCE_PRECISION_HINT=f32. OpenVINO is optional
(``pip install openvino``), never a dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

RUNTIMES = ("fastgru", "fastgru-bf16", "onnxruntime", "torch", "openvino", "openvino-f32")


@dataclass(frozen=True)
class Case:
    """One benchmark: a model (built-in random weights, or a file) and an input shape."""

    name: str
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    stream: bool = False
    model_path: str | None = None
    whole_graph: bool = False  # an ONNX model with more than GRUs: fastgru.InferenceSession
    load_options: dict | None = None  # fastgru.load's options for model_path

    @property
    def flops(self) -> float:
        """Multiply-adds as 2 FLOPs over all layers and directions: 6*H*(D_in + H) per row-step."""
        dirs = 2 if self.bidirectional else 1
        per_row_step = sum(
            dirs * 6 * self.hidden_size * ((self.input_size if k == 0 else dirs * self.hidden_size)
                                           + self.hidden_size)
            for k in range(self.num_layers))
        return float(per_row_step * self.batch * self.steps)

    @property
    def label(self) -> str:
        if self.whole_graph:
            return f"{self.name} (whole graph) B={self.batch} T={self.steps}"
        layers = f" L={self.num_layers}" if self.num_layers > 1 else ""
        bi = " bi" if self.bidirectional else ""
        return (f"{self.name} B={self.batch} T={self.steps} D={self.input_size} "
                f"H={self.hidden_size}{layers}{bi}")


SHAPES = {c.name: c for c in (
    Case("S1", 1, 1, 64, 128, stream=True),   # stream step, state carried
    Case("S2", 1, 100, 64, 256),              # one sequence, batch 1
    Case("S3", 16, 100, 128, 256),            # small batch
    Case("S4", 64, 50, 256, 512),             # throughput
    Case("S5", 8, 200, 80, 256, 2, True),     # stacked bidirectional
    Case("S6", 1, 50, 256, 1024),             # large hidden
)}


def case_for_model(path: str, batch: int, steps: int, load_options=None) -> Case:
    """A case for the user's model file: a GRU model, or an ONNX model that is more than a GRU
    stack (run whole by fastgru.InferenceSession against onnxruntime on the same file)."""
    import fastgru
    from fastgru.loaders import files

    try:
        model = fastgru.load(path, **(load_options or {}))
    except fastgru.FormatError:
        if files.sniff(path) != "onnx":
            raise
        session = fastgru.InferenceSession(path)  # a clear error if it cannot run either
        gru = next(stage[1].model for stage in session._stages if stage[0] == "gru")
        return Case(os.path.basename(path), batch, steps, gru.input_size, gru.hidden_size,
                    model_path=os.path.abspath(path), whole_graph=True)
    return Case(os.path.basename(path), batch, steps, model.input_size, model.hidden_size,
                model.num_layers, model.bidirectional, model_path=os.path.abspath(path),
                load_options=load_options or None)


def random_feeds(inputs, batch: int, steps: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Random inputs for a graph's inputs (onnxruntime's NodeArgs): a dimension without a fixed
    size is `batch` in the first position and `steps` elsewhere; integer inputs hold `steps`
    (lengths), floating ones standard normal values."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in inputs:
        dims = arg.shape or []
        shape = [d if isinstance(d, int) and d > 0 else (batch if k == 0 else steps)
                 for k, d in enumerate(dims)]
        kind = arg.type[len("tensor("):-1]
        if "int" in kind:
            feeds[arg.name] = np.full(shape, steps, np.dtype(kind))
        elif kind in ("float", "double", "float16"):
            dtype = {"float": np.float32, "double": np.float64, "float16": np.float16}[kind]
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif kind == "bool":
            feeds[arg.name] = np.zeros(shape, bool)
        else:
            raise ValueError(f"cannot make random values for input {arg.name!r} of {arg.type}")
    return feeds


def _random_state_dict(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch-keyed random weights, the same in every worker, without needing torch."""
    rng = np.random.default_rng(seed)
    H, dirs = case.hidden_size, 2 if case.bidirectional else 1
    bound = 1 / np.sqrt(H)
    state = {}
    for k in range(case.num_layers):
        d_in = case.input_size if k == 0 else dirs * H
        for suffix in ["", "_reverse"][:dirs]:
            for name, size in (("weight_ih", (3 * H, d_in)), ("weight_hh", (3 * H, H)),
                               ("bias_ih", (3 * H,)), ("bias_hh", (3 * H,))):
                state[f"{name}_l{k}{suffix}"] = rng.uniform(-bound, bound, size).astype(np.float32)
    return state


def builtin_model(case: Case):
    """The case's model file, or seeded random weights of its shape (the same in every process)."""
    import fastgru

    if case.model_path:
        return fastgru.load(case.model_path, **(case.load_options or {}))
    return fastgru.GRU.from_torch(_random_state_dict(case))


def onnxruntime_session(model, threads: int):
    """onnxruntime's CPU session on `model` (a path or serialized bytes) with `threads` threads
    for each operator and one for the graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _whole_graph_call(runtime: str, case: Case, threads: int):
    """(call, output) for a whole ONNX graph: fastgru.InferenceSession or onnxruntime."""
    if runtime == "fastgru":
        import fastgru

        session = fastgru.InferenceSession(case.model_path, threads=threads)
    elif runtime == "onnxruntime":
        session = onnxruntime_session(case.model_path, threads)
    else:
        raise ValueError(f"{runtime} cannot run a whole ONNX graph; compare with onnxruntime")
    feeds = random_feeds(session.get_inputs(), case.batch, case.steps)
    result = {}
    return (lambda: result.__setitem__("y", session.run(None, feeds)[0])), \
        (lambda: result["y"])


def _openvino_call(model, case: Case, x: np.ndarray, threads: int, f32: bool):
    """(call, output) for OpenVINO on the graph onnxruntime runs, in its default precision or
    float32."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        model.to_onnx(path, state_inputs=case.stream)
        compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    first_output = compiled.outputs[0]
    result = {}
    if case.stream:
        h = np.zeros((1, case.batch, case.hidden_size), np.float32)
        one_step = np.ones(case.batch, np.int32)

        def step():
            nonlocal h
            outputs = request.infer({"X": x[:1], "initial_h": h, "sequence_lens": one_step})
            h = outputs[compiled.outputs[1]].copy()
        return step, (lambda: h[0].copy())
    return (lambda: result.__setitem__("y", request.infer({"X": x})[first_output].copy())), \
        (lambda: result["y"])


def _make_call(runtime: str, case: Case, threads: int):
    """(call, output): one benchmark call, and a function returning the last call's result."""
    from fastgru import GRU

    if case.whole_graph:
        return _whole_graph_call(runtime, case, threads)
    model = builtin_model(case)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((case.steps, case.batch, case.input_size)).astype(np.float32)
    if model.batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    result = {}
    if runtime in ("fastgru", "fastgru-bf16"):
        if runtime == "fastgru-bf16":
            model = GRU(model.spec, batch_first=model.batch_first, dtype="bfloat16")
        if case.stream:
            stream = model.stream(case.batch)
            out = np.empty((case.batch, case.hidden_size), np.float32)
            return (lambda: stream.step(x[0], out=out)), (lambda: out.copy())
        return (lambda: result.__setitem__("y", model(x)[0])), (lambda: result["y"])
    if runtime.startswith("openvino"):
        return _openvino_call(model, case, x, threads, f32=runtime == "openvino-f32")
    if runtime == "onnxruntime":
        session = onnxruntime_session(
            model.to_onnx(state_inputs=case.stream).SerializeToString(), threads)
        if case.stream:
            h = np.zeros((1, case.batch, case.hidden_size), np.float32)
            one_step = np.ones(case.batch, np.int32)

            def step():
                nonlocal h
                _, h = session.run(None, {"X": x[:1], "initial_h": h, "sequence_lens": one_step})
            return step, (lambda: h[0].copy())
        return (lambda: result.__setitem__("y", session.run(None, {"X": x})[0])), \
            (lambda: result["y"])
    if runtime == "torch":
        import torch

        from fastgru.loaders.torch import module_from_spec, spec_to_state_dict

        torch.set_num_threads(threads)
        xt = torch.from_numpy(x)
        if case.stream:
            cell = torch.nn.GRUCell(case.input_size, case.hidden_size).eval()
            cell.load_state_dict({k.replace("_l0", ""): torch.from_numpy(v.astype(np.float32))
                                  for k, v in spec_to_state_dict(model.spec).items()})
            h = torch.zeros(case.batch, case.hidden_size)

            def step():
                nonlocal h
                with torch.inference_mode():
                    h = cell(xt[0], h)
            return step, (lambda: h.numpy().copy())
        module = module_from_spec(model.spec, batch_first=model.batch_first)

        def run():
            with torch.inference_mode():
                result["y"] = module(xt)[0]
        return run, (lambda: result["y"].numpy())
    raise ValueError(f"unknown runtime {runtime!r}; choose from {RUNTIMES}")


def call_times(call, seconds: float, at_least: int = 5, at_most: int = 100_000) -> list[float]:
    """Seconds taken by each of call()'s calls, made back to back for `seconds` (at least
    `at_least` calls, at most `at_most`). Warm the call up first."""
    times = []
    end = time.perf_counter() + seconds
    while len(times) < at_least or (time.perf_counter() < end and len(times) < at_most):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(call, seconds: float, at_least: int = 5) -> float:
    """The median of call_times(call, seconds, at_least)."""
    return float(np.median(call_times(call, seconds, at_least)))


def worker(runtime: str, case: Case, threads: int, seconds: float, out_path: str) -> dict:
    """Time one runtime on one case in this process; saves its output to out_path."""
    start = time.perf_counter()
    call, output = _make_call(runtime, case, threads)
    call()  # compile or load, and the first run
    first_call = time.perf_counter() - start
    np.save(out_path, output())
    warm_until = time.perf_counter() + min(0.5, seconds / 4)
    while time.perf_counter() < warm_until:
        call()
    times = call_times(call, seconds)
    return {"runtime": runtime, "case": case.name, "threads": threads, "calls": len(times),
            "median_s": float(np.median(times)), "p99_s": float(np.percentile(times, 99)),
            "setup_s": first_call}


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    return env


def run(cases, runtimes, threads_list, seconds: float, rounds: int = 1,
        progress=None) -> list[dict]:
    """Every (case, threads, runtime) in its own worker process; returns one record each.

    With rounds > 1 the runtimes take turns (fastgru, peers, fastgru, peers, ...) and a record
    holds the median over rounds of each round's median and p99. Each record gets
    ``max_abs_diff``: its output against onnxruntime's (or fastgru's without onnxruntime).
    """
    progress = sys.stderr if progress is None else progress  # the stream of now, not of import
    records = []
    total = len(cases) * len(threads_list) * len(runtimes) * rounds
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        for threads in threads_list:
            for case in cases:
                outputs, rounds_of = {}, {runtime: [] for runtime in runtimes}
                for _ in range(rounds):
                    for runtime in runtimes:
                        done += 1
                        print(f"[{done}/{total}] {case.name} {runtime}, {threads} thread(s)",
                              file=progress, flush=True)
                        out_path = os.path.join(tmp, f"{runtime}.npy")
                        cmd = [sys.executable, "-m", "fastgru.benchmark", "--worker", runtime,
                               "--case", json.dumps(asdict(case)), "--threads", str(threads),
                               "--seconds", str(seconds), "--out", out_path]
                        proc = subprocess.run(cmd, capture_output=True, text=True,
                                              env=thread_env(threads))
                        if proc.returncode != 0:
                            raise RuntimeError(f"the {runtime} worker failed on {case.name}:\n"
                                               f"{proc.stderr[-2000:]}")
                        rounds_of[runtime].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                        outputs[runtime] = np.load(out_path).astype(np.float64)
                ref = outputs.get("onnxruntime", outputs["fastgru"])
                for runtime, measured in rounds_of.items():
                    record = dict(measured[0])
                    for key in ("median_s", "p99_s", "setup_s"):
                        record[key] = float(np.median([m[key] for m in measured]))
                    record["calls"] = sum(m["calls"] for m in measured)
                    record["max_abs_diff"] = float(np.abs(outputs[runtime] - ref).max())
                    records.append(record)
    return records


def table(records, cases) -> str:
    """Markdown: a row per case, thread count and runtime."""
    by_name = {c.name: c for c in cases}
    base = {(r["case"], r["threads"]): r["median_s"] for r in records if r["runtime"] == "fastgru"}
    ref = "onnxruntime" if any(r["runtime"] == "onnxruntime" for r in records) else "fastgru"
    lines = [f"| case | threads | runtime | median µs | p99 µs | GFLOP/s | time / fastgru's "
             f"| max abs diff vs {ref} |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        case = by_name[r["case"]]
        gflops = "-" if case.whole_graph else f"{case.flops / r['median_s'] / 1e9:.1f}"
        lines.append(
            f"| {case.label} | {r['threads']} | {r['runtime']} | {r['median_s'] * 1e6:.1f} "
            f"| {r['p99_s'] * 1e6:.1f} | {gflops} "
            f"| {r['median_s'] / base[(r['case'], r['threads'])]:.2f} "
            f"| {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def _package(runtime: str) -> str:
    """The package a runtime needs: "openvino-f32" -> "openvino"."""
    return runtime.split("-")[0]


def _available(runtime: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(_package(runtime)) is not None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="a model file; default: the built-in shapes")
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help="built-in shapes to run (default: all of S1-S6)")
    parser.add_argument("--batch", type=int, default=1, help="batch size for MODEL (default 1)")
    parser.add_argument("--seq", type=int, default=100, help="steps for MODEL (default 100)")
    parser.add_argument("--vs", default="onnxruntime",
                        help="comma-separated peers among fastgru-bf16,onnxruntime,torch,openvino,"
                             "openvino-f32 (default onnxruntime)")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="timing budget per measurement (default 1.0)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each runtime, taking turns in fresh processes; the table "
                             "gives the median over rounds (default 1). On a machine whose speed "
                             "moves between processes, compare with 3 or more")


def bench(args) -> int:
    """The ``fastgru bench`` command: prints the table; 2 for bad arguments."""
    peers = [p for p in args.vs.split(",") if p]
    bad = [p for p in peers if p not in RUNTIMES[1:]]
    if bad:
        raise ValueError(f"unknown peer(s) {bad}; choose from {list(RUNTIMES[1:])}")
    missing = [p for p in peers if not _available(p)]
    if missing:
        packages = sorted({_package(p) for p in missing})
        raise ImportError(f"{', '.join(packages)} is not installed: "
                          f"pip install {' '.join(packages)}")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        raise ValueError(f"--threads takes comma-separated positive integers, got "
                         f"{args.threads!r}") from None
    if not threads or min(threads) < 1:
        raise ValueError(f"--threads takes comma-separated positive integers, got "
                         f"{args.threads!r}")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be positive, got {args.rounds}")
    if args.model:
        if args.batch < 1 or args.seq < 1:
            raise ValueError(f"--batch and --seq must be positive, got {args.batch}, {args.seq}")
        from fastgru.cli import _load_options

        cases = [case_for_model(args.model, args.batch, args.seq, _load_options(args))]
    else:
        unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
        cases = [SHAPES[s] for s in args.shapes.split(",")]
    records = run(cases, ["fastgru", *peers], threads, args.seconds, args.rounds)
    print(table(records, cases))
    return 0


def _worker_main(argv) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=RUNTIMES, required=True)
    parser.add_argument("--case", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    case = Case(**json.loads(args.case))
    print(json.dumps(worker(args.worker, case, args.threads, args.seconds, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
