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
from fastgru.testing.models import random_spec
from fastgru._workspace import DERIVED_KEPT, KEEP_BYTES

HERE = os.path.dirname(os.path.abspath(__file__))


def run_python(code: str, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=HERE, env={**os.environ, **env})


def test_lengths_changed_by_another_thread_during_a_call():
    """The kernels index by lengths; a caller's thread flipping them mid-call once made the
    reverse direction read out of bounds (SIGSEGV). Validated lengths are a private copy."""
    code = """if True:
        import threading, time, numpy as np, fastgru
        from fastgru.testing.models import random_spec
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
        from fastgru.testing.models import onnx_gru_model, random_spec
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
        from fastgru.testing.models import random_spec
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


def test_weights_are_held_once_in_the_models_dtype_and_once_packed(rng):
    """A float64 copy of the weights was kept beside the packed float32 ones (item 4)."""
    spec = random_spec(rng, 100, 64, 2)
    weights = 4 * sum(a.size for layer in spec.layers for a in (layer.w, layer.r, layer.b))
    for dtype in ("float32", "bfloat16"):
        model = fastgru.GRU(spec, dtype=dtype)
        held = sum(a.nbytes for layer in model.spec.layers for a in (layer.w, layer.r, layer.b))
        assert held == weights, dtype  # float32 values (bfloat16 ones exact), not float64
        packed = model._packed.w0.nbytes + model._packed.wrest.nbytes + model._packed.r.nbytes
        assert packed <= (1 if dtype == "bfloat16" else 2) * weights, dtype


def test_a_long_call_does_not_pin_its_scratch(rng):
    model = fastgru.GRU(random_spec(rng, 4, 64))
    model(rng.standard_normal((400_000, 1, 4)).astype(np.float32))  # ~310 MB of scratch
    assert model._pool.kept_bytes <= KEEP_BYTES
    model(rng.standard_normal((20, 2, 4)))
    assert 0 < model._pool.kept_bytes <= KEEP_BYTES  # small ones are still reused


def test_calls_of_ever_new_shapes_keep_a_bounded_scratch_index(rng):
    # Each workspace keeps the views and argument tuples of the shapes it has served; a service
    # whose calls keep bringing new (T, B) must not grow without end.
    model = fastgru.GRU(random_spec(rng, 4, 8))
    model(rng.standard_normal((300, 3, 4)))  # the largest buffers first: no replacement after
    for steps in range(1, 300):
        model(rng.standard_normal((steps, 1 + steps % 3, 4)))
    [(workspace, _)] = model._pool._idle
    assert 0 < len(workspace._derived) <= DERIVED_KEPT < 299  # fewer than the shapes served


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
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64', "
                                         r"'bfloat16', 'int8'\), got 'float16'"):
        fastgru.GRU(random_spec(rng, 3, 4), dtype="float16")
    # None: the weights' own (float32 for float weights; int8 where every layer came in int8)
    assert fastgru.GRU(random_spec(rng, 3, 4), dtype=None).precision == "float32"


def _package_copy(tmp_path):
    """fastgru's package copied without caches, and a script that imports that copy, calls a
    model and prints the call's cache hits and misses."""
    import shutil

    root = tmp_path / "site"
    shutil.copytree(os.path.dirname(fastgru.__file__), root / "fastgru",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp_path / "call.py"
    script.write_text(f"""if True:
        import sys, warnings
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, {str(root)!r})
        warnings.simplefilter("always")
        import numpy as np, fastgru
        from fastgru.kernels import gru
        assert fastgru.__file__.startswith({str(root)!r}), fastgru.__file__
        m = fastgru.GRU.from_torch({{"weight_ih_l0": np.zeros((12, 3)),
                                     "weight_hh_l0": np.zeros((12, 4))}})
        m(np.zeros((2, 1, 3)))
        stats = gru.gru_layer_serial.stats
        print("hits", sum(stats.cache_hits.values()), "misses", sum(stats.cache_misses.values()))
    """)
    return root, script


def _run_as_another_user(script, **env):
    """Run as 'nobody' when we are root (root writes anywhere), else as ourselves."""
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] \
        if os.geteuid() == 0 else []
    return subprocess.run([*prefix, sys.executable, str(script)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def _read_only(path):
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chmod(os.path.join(folder, name), 0o555 if name in dirs else 0o444)
    os.chmod(path, 0o555)


@pytest.fixture
def shared_tmp():
    """A folder another user can enter (pytest's tmp_path sits in a root-only folder)."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="fastgru-")
    os.chmod(path, 0o755)
    yield __import__("pathlib").Path(path)
    for folder, _, _ in os.walk(path):
        os.chmod(folder, 0o755)
    shutil.rmtree(path)


@pytest.mark.slow
def test_read_only_package_without_a_writable_cache(shared_tmp):
    """A read-only image (package folder and HOME read-only, no NUMBA_CACHE_DIR): import once
    raised RuntimeError. Now it runs, from a prebuilt cache when one sits beside the package,
    else compiling in memory, and says so once."""
    tmp_path = shared_tmp
    root, script = _package_copy(tmp_path)
    no_home = {"HOME": str(tmp_path / "no-home"), "NUMBA_CACHE_DIR": ""}
    _read_only(root)
    bare = _run_as_another_user(script, **no_home)
    assert bare.returncode == 0, bare.stderr[-2000:]
    assert bare.stderr.count("kernels are compiled in memory") == 1
    assert "hits 0" in bare.stdout

    (tmp_path / "prebuilt").mkdir(mode=0o755)
    prebuilt_root, prebuilt_script = _package_copy(tmp_path / "prebuilt")
    built = subprocess.run([sys.executable, str(prebuilt_script)], capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    _read_only(prebuilt_root)
    cached = _run_as_another_user(prebuilt_script, **no_home)
    assert cached.returncode == 0, cached.stderr[-2000:]
    assert "compiled in memory" not in cached.stderr
    assert "misses 0" in cached.stdout and "hits 0" not in cached.stdout


@pytest.mark.slow
def test_damaged_cache_is_recompiled(tmp_path):
    """7 garbage bytes in a cache index once made every process fail with UnpicklingError."""
    root, script = _package_copy(tmp_path)
    first = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    indexes = [os.path.join(root, "fastgru", "kernels", "__pycache__", name)
               for name in os.listdir(root / "fastgru" / "kernels" / "__pycache__")
               if name.endswith(".nbi")]
    assert indexes
    for index in indexes:
        with open(index, "wb") as f:
            f.write(b"garbage")
    damaged = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=300)
    assert damaged.returncode == 0, damaged.stderr[-2000:]
    assert damaged.stderr.count("could not be read") == 1
    again = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "could not be read" not in again.stderr
    assert "misses 0" in again.stdout  # the next process loads the rewritten cache


@pytest.mark.slow
def test_cache_follows_inlined_helpers(tmp_path):
    """gru.py's kernels inline bfloat16.round_to_pairs: after a fix to it (NaNs kept), the
    kernels were still loaded from Numba's cache, which is keyed on gru.py alone, with the old
    rounding inlined. A change to any kernel module now recompiles them."""
    root, script = _package_copy(tmp_path)
    first = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0 and "hits 0" in first.stdout, first.stderr[-2000:]
    with open(root / "fastgru" / "kernels" / "activations.py", "a") as f:
        f.write("\n# a change to a helper that the kernels inline\n")
    changed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=300)
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "hits 0" in changed.stdout and "misses 0" not in changed.stdout


def test_small_files_that_claim_huge_weights(tmp_path):
    """A ~4 KB .pt of broadcast (stride-0) weights once reached 5.5 GB; a sparse 3 GB .onnx was
    read whole before its error. Both are refused before anything large is allocated."""
    import torch

    state = {"weight_ih_l0": torch.zeros(1).expand(3 * 64, 1_000_000),
             "weight_hh_l0": torch.zeros(3 * 64, 64)}
    torch.save(state, tmp_path / "broadcast.pt")
    assert os.path.getsize(tmp_path / "broadcast.pt") < 100_000  # weight_hh: 49 KB
    with pytest.raises(fastgru.FormatError, match=r"weight_ih_l0 is a broadcast view"):
        fastgru.load(tmp_path / "broadcast.pt")
    with pytest.raises(fastgru.FormatError, match=r"weight_ih_l0 is a broadcast view"):
        fastgru.GRU.from_torch({k: v.numpy() for k, v in state.items()})
    sparse = tmp_path / "huge.onnx"
    with open(sparse, "wb") as f:
        f.truncate(3 * 2**30)  # a sparse file: 3 GiB claimed, nothing on disk
    with pytest.raises(fastgru.FormatError, match=r"is 3.0 GiB; an ONNX file holds at most 2 GiB"):
        fastgru.load(sparse)
