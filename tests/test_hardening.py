"""What a hostile or careless caller does (issue 12): nothing may crash or hang the process, lose
data or leave a model changed. The crash and hang cases run in subprocesses with time limits."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastgru
from conftest import random_spec
from fastgru._workspace import KEEP_BYTES

HERE = os.path.dirname(os.path.abspath(__file__))


def run_python(code: str, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=HERE, env={**os.environ, **env})


def test_lengths_changed_by_another_thread_during_a_call():
    """The kernels index by lengths; a caller's thread flipping them mid-call once made the
    reverse direction read out of bounds (SIGSEGV). Validated lengths are a private copy."""
    code = """if True:
        import threading, time, numpy as np, fastgru
        from conftest import random_spec
        rng = np.random.default_rng(0)
        model = fastgru.GRU(random_spec(rng, 4, 32, 1, "bidirectional"))
        x = rng.standard_normal((2000, 8, 4)).astype(np.float32)
        lengths = np.full(8, 2000)
        stop = threading.Event()
        def flip():  # valid at the check, out of range while the kernel runs (GIL released)
            while not stop.is_set():
                lengths[:] = 2000
                time.sleep(0.0003)
                lengths[:] = 10**9
                time.sleep(0.0003)
        t = threading.Thread(target=flip); t.start()
        ran, end = 0, time.perf_counter() + 2
        try:
            while time.perf_counter() < end or ran < 5:
                try:
                    model(x, lengths=lengths)
                    ran += 1
                except ValueError:  # the check saw the out-of-range value: refused, fine
                    pass
        finally:
            stop.set(); t.join()
        print("survived", ran)
    """
    result = run_python(code)
    assert result.returncode == 0 and "survived" in result.stdout, result.stderr[-2000:]


def test_identity_cycle_in_a_graph_ends_with_an_error():
    """An ONNX graph whose GRU input comes through a cycle of Identity nodes once made load,
    from_onnx and `fastgru info` loop forever."""
    code = """if True:
        import numpy as np, onnx, fastgru
        from onnx import helper
        from conftest import onnx_gru_model, random_spec
        proto = onnx_gru_model(random_spec(np.random.default_rng(0), 3, 4))
        proto.graph.node[0].input[0] = "a"
        proto.graph.node.extend([helper.make_node("Identity", ["b"], ["a"]),
                                 helper.make_node("Identity", ["a"], ["b"])])
        onnx.save(proto, "/tmp/fastgru_cycle.onnx")
        for call in (lambda: fastgru.load("/tmp/fastgru_cycle.onnx"),
                     lambda: fastgru.GRU.from_onnx(proto),
                     lambda: fastgru.InferenceSession(proto)):
            try:
                call()
            except fastgru.FormatError as error:
                assert "cycle" in str(error), error
        from fastgru.cli import main
        assert main(["info", "/tmp/fastgru_cycle.onnx"]) == 2
        print("ended")
    """
    result = run_python(code, timeout=60)
    assert result.returncode == 0 and "ended" in result.stdout, result.stderr[-2000:]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_fork_while_another_thread_is_in_a_call_under_workqueue():
    """Under the workqueue layer fastgru serializes parallel calls with a lock; a fork while a
    thread held it left the child's first call waiting forever."""
    code = """if True:
        import os, threading, numpy as np, fastgru
        from conftest import random_spec
        rng = np.random.default_rng(0)
        model = fastgru.GRU(random_spec(rng, 8, 256, 2))
        x = rng.standard_normal((200, 64, 8)).astype(np.float32)
        model(x[:2])
        busy = threading.Thread(target=lambda: [model(x) for _ in range(20)])
        busy.start()
        import time; time.sleep(0.05)
        pid = os.fork()
        if pid == 0:
            model(x[:3, :2])
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        busy.join()
        import numba
        print(numba.threading_layer(), "child exit", os.waitstatus_to_exitcode(status))
    """
    result = run_python(code, timeout=120, NUMBA_THREADING_LAYER="workqueue",
                        NUMBA_NUM_THREADS="2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "workqueue child exit 0"


def test_a_long_call_does_not_pin_its_scratch(rng):
    model = fastgru.GRU(random_spec(rng, 4, 64))
    model(rng.standard_normal((100_000, 1, 4)).astype(np.float32))  # ~77 MB of scratch
    assert model._pool.kept_bytes <= KEEP_BYTES
    model(rng.standard_normal((20, 2, 4)))
    assert 0 < model._pool.kept_bytes <= KEEP_BYTES  # small ones are still reused


def test_models_pickle_and_deep_copy(rng):
    model = fastgru.GRU(random_spec(rng, 3, 5, 2, "bidirectional"), batch_first=True,
                        dtype="float64", initial_state=rng.standard_normal((4, 5)))
    x = rng.standard_normal((2, 6, 3))
    expected = model(x)
    for again in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert repr(again) == repr(model)
        for a, b in zip(again(x), expected, strict=True):
            assert np.array_equal(a, b)
    assert len(pickle.dumps(model)) < 20_000  # weights and options, no workspaces


def test_spec_is_read_only(rng):
    model = fastgru.GRU(random_spec(rng, 3, 4), initial_state=np.ones((1, 4)))
    with pytest.raises(ValueError, match="read-only"):
        model.spec.layers[0].r[0, 0, 0] = 5.0
    with pytest.raises(ValueError, match="read-only"):
        model.spec.initial_state[0, 0] = 5.0


def test_streams_refuse_a_bad_state_and_a_second_thread(rng):
    model = fastgru.GRU(random_spec(rng, 3, 300))
    batch = model.stream_batch()
    for _ in range(100):
        with pytest.raises(ValueError, match=r"h must have shape \(1, 300\)"):
            batch.add(np.zeros(7))
    assert len(batch) == 0  # no phantom clients

    stream = model.stream(64)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    errors, start = [], threading.Barrier(4)

    def step_many():
        start.wait()
        for _ in range(300):
            try:
                stream.step(x)
            except RuntimeError as error:
                errors.append(str(error))

    threads = [threading.Thread(target=step_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors and "being stepped by another thread" in errors[0]


def test_small_refusals(rng):
    model = fastgru.GRU(random_spec(rng, 3, 4))
    y, h_n = model(np.zeros((5, 0, 3)), lengths=[])  # an empty batch, empty lengths
    assert y.shape == (5, 0, 4) and h_n.shape == (1, 0, 4)
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64'\), got None"):
        fastgru.GRU(random_spec(rng, 3, 4), dtype=None)
