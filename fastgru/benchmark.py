"""Side-by-side timing of fastgru and its peers, each runtime in its own process.

``python -m fastgru.benchmark`` (or ``fastgru bench``) prints a Markdown table for the benchmark
shapes of DESIGN.md on a built-in random model. Each measurement runs in a fresh worker process
(onnxruntime's idle threads spin and would distort a shared process), with the thread count fixed
by environment variables before any library loads; workers for the same shape run one after the
other; the figure that counts is the ratio of medians measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

RUNTIMES = ("fastgru", "onnxruntime", "torch")


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    what: str = ""

    @property
    def flops(self) -> float:
        """Multiply-adds counted as 2 FLOPs, all layers and directions: 6*H*(D_in + H) per row-step."""
        dirs = 2 if self.bidirectional else 1
        total = 0
        for k in range(self.num_layers):
            d_in = self.input_size if k == 0 else dirs * self.hidden_size
            total += dirs * 6 * self.hidden_size * (d_in + self.hidden_size)
        return float(total * self.batch * self.steps)


SHAPES = {s.name: s for s in (
    Shape("S1", 1, 1, 64, 128, what="stream step, state carried"),
    Shape("S2", 1, 100, 64, 256, what="one sequence, batch 1"),
    Shape("S3", 16, 100, 128, 256, what="small batch"),
    Shape("S4", 64, 50, 256, 512, what="throughput"),
    Shape("S5", 8, 200, 80, 256, 2, True, what="2-layer bidirectional"),
    Shape("S6", 1, 50, 256, 1024, what="large hidden"),
)}


def _torch_module(shape: Shape, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return torch.nn.GRU(shape.input_size, shape.hidden_size, num_layers=shape.num_layers,
                        bidirectional=shape.bidirectional).eval()


def _state_dict(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch-keyed random weights, the same in every worker, without needing torch."""
    rng = np.random.default_rng(seed)
    H, dirs = shape.hidden_size, 2 if shape.bidirectional else 1
    bound = 1 / np.sqrt(H)
    state = {}
    for k in range(shape.num_layers):
        d_in = shape.input_size if k == 0 else dirs * H
        for suffix in ["", "_reverse"][:dirs]:
            for name, size in (("weight_ih", (3 * H, d_in)), ("weight_hh", (3 * H, H)),
                               ("bias_ih", (3 * H,)), ("bias_hh", (3 * H,))):
                state[f"{name}_l{k}{suffix}"] = rng.uniform(-bound, bound, size).astype(np.float32)
    return state


def _inputs(shape: Shape, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((shape.steps, shape.batch, shape.input_size)).astype(np.float32)


def _make_call(runtime: str, shape: Shape, threads: int):
    """A zero-argument function doing one benchmark call, and a function returning its output."""
    state = _state_dict(shape)
    x = _inputs(shape)
    stream = shape.name == "S1"
    if runtime == "fastgru":
        import fastgru

        model = fastgru.GRU.from_torch(state)
        if stream:
            s = model.stream(shape.batch)
            out = np.empty((shape.batch, shape.hidden_size), np.float32)
            return (lambda: s.step(x[0], out=out)), (lambda: out.copy())
        result = {}
        return (lambda: result.__setitem__("y", model(x)[0])), (lambda: result["y"])
    if runtime == "torch":
        import torch

        torch.set_num_threads(threads)
        module = _torch_module(shape)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        xt = torch.from_numpy(x)
        result = {}
        if stream:
            cell = torch.nn.GRUCell(shape.input_size, shape.hidden_size).eval()
            cell.load_state_dict({k.replace("_l0", ""): torch.from_numpy(v)
                                  for k, v in state.items()})
            h = torch.zeros(shape.batch, shape.hidden_size)

            def step():
                nonlocal h
                with torch.inference_mode():
                    h = cell(xt[0], h)
            return step, (lambda: h.numpy().copy())

        def run():
            with torch.inference_mode():
                result["y"] = module(xt)[0]
        return run, (lambda: result["y"].numpy())
    if runtime == "onnxruntime":
        import onnxruntime as ort

        import fastgru

        model = fastgru.GRU.from_torch(state)
        proto = model.to_onnx(state_inputs=stream)  # sequences: X alone, as users run it
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(proto.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        result = {}
        dirs = 2 if shape.bidirectional else 1
        h = np.zeros((dirs, shape.batch, shape.hidden_size), np.float32)
        if stream:
            one_step = np.ones(shape.batch, np.int32)

            def step():
                nonlocal h
                y, h = session.run(None, {"X": x[:1], "initial_h": h, "sequence_lens": one_step})
            return step, (lambda: h[0].copy())

        def run():
            result["y"] = session.run(None, {"X": x})[0]
        return run, (lambda: result["y"])
    raise ValueError(f"unknown runtime {runtime!r}; choose from {RUNTIMES}")


def worker(runtime: str, shape: Shape, threads: int, seconds: float, out_path: str) -> dict:
    """Time one runtime on one shape in this process; writes its first output to out_path."""
    start = time.perf_counter()
    call, output = _make_call(runtime, shape, threads)
    call()  # compile / first run
    first_call = time.perf_counter() - start
    np.save(out_path, output())
    warm_until = time.perf_counter() + min(0.5, seconds / 4)
    while time.perf_counter() < warm_until:
        call()
    times = []
    end = time.perf_counter() + seconds
    while len(times) < 5 or (time.perf_counter() < end and len(times) < 100_000):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    times = np.array(times)
    return {"runtime": runtime, "shape": shape.name, "threads": threads, "calls": len(times),
            "median_s": float(np.median(times)), "p99_s": float(np.percentile(times, 99)),
            "setup_s": first_call}


def _thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    return env


def _available(runtime: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(runtime) is not None


def run(shapes, runtimes, threads_list, seconds: float, stream=sys.stdout) -> list[dict]:
    """Run every (shape, threads, runtime) in its own worker process; returns the records."""
    records = []
    total = len(shapes) * len(threads_list) * len(runtimes)
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        for threads in threads_list:
            for shape in shapes:
                outputs = {}
                for runtime in runtimes:
                    done += 1
                    print(f"[{done}/{total}] {shape.name} {runtime} {threads} thread(s)...",
                          file=sys.stderr, flush=True)
                    out_path = os.path.join(tmp, f"{runtime}.npy")
                    cmd = [sys.executable, "-m", "fastgru.benchmark", "--worker", runtime,
                           "--shapes", shape.name, "--threads", str(threads),
                           "--seconds", str(seconds), "--out", out_path]
                    proc = subprocess.run(cmd, capture_output=True, text=True,
                                          env=_thread_env(threads))
                    if proc.returncode != 0:
                        raise RuntimeError(f"{runtime} worker failed on {shape.name}:\n"
                                           f"{proc.stderr[-2000:]}")
                    record = json.loads(proc.stdout.strip().splitlines()[-1])
                    outputs[runtime] = np.load(out_path)
                    records.append(record)
                for record in records[-len(runtimes):]:
                    ref = outputs.get("onnxruntime", outputs[runtimes[0]])
                    record["max_abs_diff_vs_ref"] = float(
                        np.abs(outputs[record["runtime"]].astype(np.float64) - ref).max())
    return records


def table(records) -> str:
    """Markdown table: one row per shape and thread count, a column group per runtime."""
    lines = ["| shape | threads | runtime | median µs | p99 µs | GFLOP/s | peer time / fastgru "
             "| max abs diff vs onnxruntime |",
             "|---|---|---|---|---|---|---|---|"]
    base = {(r["shape"], r["threads"]): r["median_s"] for r in records if r["runtime"] == "fastgru"}
    for r in records:
        shape = SHAPES[r["shape"]]
        ratio = r["median_s"] / base[(r["shape"], r["threads"])] if base else float("nan")
        lines.append(
            f"| {shape.name} B={shape.batch} T={shape.steps} D={shape.input_size} "
            f"H={shape.hidden_size}{' L=2 bi' if shape.bidirectional else ''} | {r['threads']} "
            f"| {r['runtime']} | {r['median_s'] * 1e6:.1f} | {r['p99_s'] * 1e6:.1f} "
            f"| {shape.flops / r['median_s'] / 1e9:.1f} | {ratio:.2f} "
            f"| {r['max_abs_diff_vs_ref']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastgru bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help="comma-separated benchmark shapes (default: all of S1-S6)")
    parser.add_argument("--vs", default="onnxruntime",
                        help="comma-separated peers among onnxruntime,torch (default: onnxruntime)")
    parser.add_argument("--threads", default="1",
                        help="comma-separated thread counts (default: 1)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="timing budget per measurement (default: 1.0)")
    parser.add_argument("--worker", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    shapes = [SHAPES[s] for s in args.shapes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    if args.worker:
        print(json.dumps(worker(args.worker, shapes[0], threads[0], args.seconds, args.out)))
        return 0
    peers = [p for p in args.vs.split(",") if p]
    bad = [p for p in peers if p not in RUNTIMES[1:]]
    if bad:
        parser.error(f"unknown peer(s) {bad}; choose from {list(RUNTIMES[1:])}")
    missing = [p for p in peers if not _available(p)]
    if missing:
        print(f"fastgru bench: {', '.join(missing)} is not installed "
              f"(pip install {' '.join(missing)})", file=sys.stderr)
        return 2
    records = run(shapes, ["fastgru", *peers], threads, args.seconds)
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
