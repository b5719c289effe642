"""The example service (examples/service.py) on a loopback port, driven by concurrent clients;
every answer is checked against a direct call of the same model."""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest

import fastgru
from fastgru.testing.asserts import assert_close
from fastgru.testing.models import random_spec


@functools.cache
def _example(name):
    """examples/<name>.py, loaded from its path (examples/ is not an installed package)."""
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


load = _example("load")
free_port, request, start_service = load.free_port, load.request, load.start_service


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("service") / "model.safetensors"
    fastgru.GRU(random_spec(np.random.default_rng(5), 6, 16, 2)).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["fastgru", "onnxruntime"])
def test_service_answers_concurrent_clients_like_a_direct_call(model_file, backend):
    model = fastgru.load(model_file)
    port = free_port()
    proc = start_service(backend, port, str(model_file))
    failures: list[str] = []
    try:
        def sequences(seed):
            rng = np.random.default_rng(seed)
            for _ in range(15):
                x = rng.standard_normal((int(rng.integers(1, 30)), 6)).astype(np.float32)
                status, body = request(port, "POST", "/sequence", {"x": x.tolist()})
                y, h = model(x)
                try:
                    assert status == 200, body
                    assert_close(body["y"], y, "float32", "y")
                    assert_close(body["h"], h, "float32", "h")
                except AssertionError as error:
                    failures.append(str(error))

        def stream(seed):
            rng = np.random.default_rng(seed)
            client = request(port, "POST", "/streams")[1]["id"]
            local = model.stream(1)
            for _ in range(20):
                x = rng.standard_normal(6).astype(np.float32)
                status, body = request(port, "POST", f"/streams/{client}/step", {"x": x.tolist()})
                try:
                    assert status == 200, body
                    assert_close(body["y"], local.step(x[None])[0], "float32", "step")
                except AssertionError as error:
                    failures.append(str(error))
            assert request(port, "DELETE", f"/streams/{client}")[0] == 200

        threads = [threading.Thread(target=sequences, args=(i,)) for i in range(6)]
        threads += [threading.Thread(target=stream, args=(100 + i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not any(t.is_alive() for t in threads)
        assert not failures, failures[:3]

        assert request(port, "POST", "/streams/12345/step", {"x": [0] * 6})[0] == 404
        assert request(port, "DELETE", "/streams/12345")[0] == 404
        status, body = request(port, "POST", "/sequence", {"x": [[1, 2]]})
        assert status == 400 and "x must be T x 6 numbers" in body["error"]
        assert request(port, "POST", "/sequence", {"y": 1})[0] == 400
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _raw(port, method, path, body: bytes):
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, {"raw": data[:200]}
    finally:
        conn.close()


@pytest.mark.slow
def test_service_refuses_careless_and_hostile_clients(model_file):
    """Client mistakes get a 4xx with a short message, never a 500; a long request waits alone
    and a NaN never reaches a stream's state (issue 12, items 13-14)."""
    port = free_port()
    limits = {"FASTGRU_MAX_BODY": "200000", "FASTGRU_MAX_STEPS": "300",
              "FASTGRU_BATCH_FRAMES": "600"}
    proc = start_service("fastgru", port, str(model_file), env=limits)
    try:
        row = "[" + ",".join(["0.5"] * 6) + "]"
        cases = [
            (b'{"x": [[1e300, 0, 0, 0, 0, 0]]}', 400, "finite numbers"),
            (b'{"x": [[NaN, 0, 0, 0, 0, 0]]}', 400, "NaN is not a number"),
            (b'{"x": [[Infinity, 0, 0, 0, 0, 0]]}', 400, "Infinity is not a number"),
            (b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "nested too deeply"),
            (b'{"x": "' + b"a" * 150_000 + b'"}', 400, "x must"),
            (b'{"x": [' + b",".join([row.encode()] * 301) + b"]}", 413, "at most 300"),
            (b"x" * 300_000, 413, "over 200000 bytes"),
            (b"{not json", 400, "not JSON"),
        ]
        for body, status, message in cases:
            got, answer = _raw(port, "POST", "/sequence", body)
            assert got == status and message in answer.get("error", ""), (body[:40], answer)
            assert len(answer["error"]) <= 300  # the bad input is never echoed back whole

        client = request(port, "POST", "/streams")[1]["id"]
        nan = _raw(port, "POST", f"/streams/{client}/step", b'{"x": [NaN, 0, 0, 0, 0, 0]}')
        assert nan[0] == 400
        status, body = request(port, "POST", f"/streams/{client}/step", {"x": [0.1] * 6})
        assert status == 200 and np.isfinite(body["y"]).all()

        # one long request among short ones: grouped apart, everyone answered correctly
        model = fastgru.load(model_file)
        rng = np.random.default_rng(9)
        xs = [rng.standard_normal((300 if i == 0 else 5, 6)).astype(np.float32)
              for i in range(12)]
        results = [None] * len(xs)

        def send(i):
            results[i] = request(port, "POST", "/sequence", {"x": xs[i].tolist()})

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for x, (status, body) in zip(xs, results, strict=True):
            assert status == 200
            assert_close(body["y"], model(x)[0], "float32", "y")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_batches_grouped_by_length_within_the_padding_budget():
    grouped_by_length = _example("service").grouped_by_length

    calls = []

    def run(xs):
        calls.append([len(x) for x in xs])
        return [len(x) for x in xs]

    xs = [np.zeros((n, 1)) for n in (400, 3, 5, 4, 100, 3)]
    assert grouped_by_length(run, 300)(xs) == [400, 3, 5, 4, 100, 3]  # the callers' order
    assert calls == [[3, 3, 4, 5], [100], [400]]  # shortest first; the long ones alone


@pytest.fixture
def asgi():
    """call(app, groups): requests (method, path, body or None) through the ASGI app in this
    process, concurrently within each group; [(status, JSON)] per request, in order. One event
    loop for the whole test, as a server has (the service's batchers live on it)."""
    import asyncio
    import json

    loop = asyncio.new_event_loop()

    async def one(app, method, path, body):
        data = b"" if body is None else json.dumps(body).encode()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 80),
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", str(len(data)).encode())]}
        sent = []

        async def receive():
            return {"type": "http.request", "body": data, "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        return status, json.loads(b"".join(m.get("body", b"") for m in sent
                                           if m["type"] == "http.response.body"))

    async def together(app, group):
        return await asyncio.wait_for(asyncio.gather(*(one(app, *c) for c in group)), 60)

    def call(app, groups):
        return [answer for group in groups
                for answer in loop.run_until_complete(together(app, group))]

    yield call
    for task in asyncio.all_tasks(loop):
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    loop.close()


def test_stream_ids_are_checked(model_file, asgi):
    create_app = _example("service").create_app

    app = create_app(fastgru.load(model_file))
    huge = "9" * 5000
    answers = asgi(app, [[("POST", "/streams", None)],
                          [("POST", f"/streams/{huge}/step", {"x": [0] * 6}),
                           ("DELETE", f"/streams/{huge}", None),
                           ("POST", "/streams/-1/step", {"x": [0] * 6}),
                           ("DELETE", "/streams/abc", None),
                           ("DELETE", "/streams/12345", None)]])
    assert answers[0][0] == 200
    for status, body in answers[1:5]:
        assert status == 400 and "a stream id is a number of at most 18 digits" in \
            body["error"] and len(body["error"]) <= 300, body
    assert answers[5] == (404, {"error": "no stream 12345"})


def test_open_streams_are_capped_and_closing_frees_the_slot(model_file, monkeypatch, rng,
                                                             asgi):
    create_app = _example("service").create_app

    monkeypatch.setenv("FASTGRU_MAX_STREAMS", "2")
    model = fastgru.load(model_file)
    app = create_app(model)
    x = rng.standard_normal((2, 6)).astype(np.float32)
    opened = asgi(app, [[("POST", "/streams", None)] * 3])
    assert sorted(status for status, _ in opened) == [200, 200, 503]
    refused = next(body for status, body in opened if status == 503)
    assert "at most 2 open streams" in refused["error"]
    first, second = (body["id"] for status, body in opened if status == 200)
    answers = asgi(app, [[("POST", f"/streams/{first}/step", {"x": x[0].tolist()})],
                          [("DELETE", f"/streams/{first}", None)],
                          [("POST", "/streams", None)],
                          [("POST", f"/streams/{first}/step", {"x": x[1].tolist()})]])
    assert [status for status, _ in answers] == [200, 200, 200, 404]
    third = answers[2][1]["id"]
    assert third not in (first, second)
    status, body = asgi(app, [[("POST", f"/streams/{third}/step", {"x": x[1].tolist()})]])[0]
    assert status == 200  # a fresh state: nothing of the closed stream's
    assert_close(body["y"], model.stream(1).step(x[1][None])[0], "float32", "fresh stream")
    assert asgi(app, [[("POST", "/streams", None)]])[0][0] == 503  # two open again


@pytest.mark.parametrize("backend", ["fastgru", "onnxruntime"])
def test_closing_streams_releases_their_memory(model_file, rng, backend):
    """The backend's memory follows the streams open: thousands opened and closed leave what a
    few need; the streams still open keep their states."""
    import tracemalloc

    service = _example("service")
    FastgruBackend, OnnxruntimeBackend = service.FastgruBackend, service.OnnxruntimeBackend

    model = fastgru.GRU(random_spec(rng, 6, 256, 2))
    engine = {"fastgru": FastgruBackend, "onnxruntime": OnnxruntimeBackend}[backend](model)
    keep = [engine.open_stream() for _ in range(3)]
    local = [model.stream(1) for _ in keep]
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    for k in range(3):
        local[k].step(x[0, k][None])
    engine.steps(keep, x[0])
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        others = [engine.open_stream() for _ in range(4000)]  # 2 * 256 * 4 bytes each
        engine.steps(others[:64], np.zeros((64, 6), np.float32))
        assert tracemalloc.get_traced_memory()[0] - base > 4000 * 2 * 256 * 4
        for client in others:
            engine.close_stream(client)
        del others, client
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert left < 200_000, left
    ys = engine.steps(keep, x[1])
    for k in range(3):
        assert_close(ys[k], local[k].step(x[1, k][None])[0], "float32", f"stream {k}")
