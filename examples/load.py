#!/usr/bin/env python
"""Load test of examples/service.py: fastgru against the same service on onnxruntime.

    .venv/bin/python examples/load.py [--clients 16] [--seconds 10] [--steps 50]

For each backend it starts the service on 127.0.0.1 (a free port), runs --clients concurrent
clients for --seconds each of two workloads (whole sequences of --steps frames; stream steps of
single frames from clients that each keep a stream open), and prints p50/p99 latency and
throughput. Every request loop is bounded in time; the servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(backend: str, port: int, model: str | None = None,
                  env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "FASTGRU_BACKEND": backend, **(env or {})}
    if model:
        env["FASTGRU_MODEL"] = model
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory",
                             "examples.service:create_app", "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "warning"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            return_code = proc.poll()
            if return_code is not None:
                raise RuntimeError(f"the {backend} service exited with status {return_code}")
            request(port, "GET", "/health")
            return proc
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"the {backend} service did not start within 120 s")


def request(port, method, path, body=None, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
        return response.status, data
    finally:
        if own:
            conn.close()


def run_clients(port, clients, seconds, work):
    """work(conn, rng) -> latency in seconds, called in a loop by each client until time is up."""
    latencies: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(seed):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        rng = np.random.default_rng(seed)
        mine = []
        while time.monotonic() < end:
            mine.append(work(conn, rng))
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    lat = np.array(latencies)
    return {"requests": len(lat), "p50_ms": 1e3 * np.median(lat),
            "p99_ms": 1e3 * np.percentile(lat, 99), "per_s": len(lat) / elapsed}


def measure(backend, clients, seconds, steps, model=None):
    port = free_port()
    proc = start_service(backend, port, model)
    try:
        D = request(port, "GET", "/health")[1]["input_size"]

        def sequence(conn, rng):
            x = rng.standard_normal((steps, D)).round(4).tolist()
            t0 = time.perf_counter()
            status, _ = request(port, "POST", "/sequence", {"x": x}, conn)
            assert status == 200
            return time.perf_counter() - t0

        streams = {}

        def frame(conn, rng):
            key = id(conn)
            if key not in streams:
                streams[key] = request(port, "POST", "/streams", None, conn)[1]["id"]
            x = rng.standard_normal(D).round(4).tolist()
            t0 = time.perf_counter()
            status, _ = request(port, "POST", f"/streams/{streams[key]}/step", {"x": x}, conn)
            assert status == 200
            return time.perf_counter() - t0

        return {"sequence": run_clients(port, clients, seconds, sequence),
                "stream step": run_clients(port, clients, seconds, frame)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=50, help="frames per sequence request")
    parser.add_argument("--model", help="a model file (default: the service's built-in model)")
    args = parser.parse_args(argv)
    print("| backend | workload | requests | p50 ms | p99 ms | requests/s |")
    print("|---|---|---|---|---|---|")
    for backend in ("fastgru", "onnxruntime"):
        for workload, r in measure(backend, args.clients, args.seconds, args.steps,
                                   args.model).items():
            print(f"| {backend} | {workload} | {r['requests']} | {r['p50_ms']:.2f} "
                  f"| {r['p99_ms']:.2f} | {r['per_s']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
