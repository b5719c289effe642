"""The example service (examples/service.py) on a loopback port, driven by concurrent clients;
every answer is checked against a direct call of the same model."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fastgru
from conftest import assert_close, random_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.load import free_port, request, start_service  # noqa: E402


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
    from examples.service import grouped_by_length

    calls = []

    def run(xs):
        calls.append([len(x) for x in xs])
        return [len(x) for x in xs]

    xs = [np.zeros((n, 1)) for n in (400, 3, 5, 4, 100, 3)]
    assert grouped_by_length(run, 300)(xs) == [400, 3, 5, 4, 100, 3]  # the callers' order
    assert calls == [[3, 3, 4, 5], [100], [400]]  # shortest first; the long ones alone
