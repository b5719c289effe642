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
