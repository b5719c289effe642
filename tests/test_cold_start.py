"""Reading an ONNX file must not import the onnx package (most of a cold start, issue 30), and a
later `import onnx` must share the message classes fastgru loaded; cached kernels load without
Numba's registries, and a compilation afterwards still works."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import fastgru
from fastgru.testing.models import random_spec

CHILD = """
import sys
import numpy as np
import fastgru
model = fastgru.load(sys.argv[1])
y, h_n = model(np.ones((4, 2, 3), np.float32))
assert "onnx" not in sys.modules and "ml_dtypes" not in sys.modules, "onnx imported"
assert "fastgru.session" not in sys.modules, "the whole-graph session imported"
assert fastgru.InferenceSession.__name__ == "InferenceSession"
import onnx
proto = onnx.load(sys.argv[1])
again = fastgru.GRU.from_onnx(proto)  # an onnx.ModelProto of the package, after the fact
assert isinstance(proto, sys.modules["onnx.onnx_ml_pb2"].ModelProto)
assert (again(np.ones((4, 2, 3), np.float32))[0] == y).all()
onnx.checker.check_model(proto)
print("ok")
"""


def test_loading_onnx_imports_no_onnx(rng, tmp_path):
    path = tmp_path / "m.onnx"
    fastgru.GRU(random_spec(rng, 3, 4, 2)).to_onnx(str(path))
    result = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


CACHED_THEN_COMPILED = """
import sys
import numpy as np
import fastgru
from numba import njit
from numba.core.registry import cpu_target
model = fastgru.load(sys.argv[1])
y = model(np.ones((4, 2, 3), np.float32))[0]  # every kernel loaded from the warm cache
assert not cpu_target.target_context._registries, "Numba's registries were installed"
np.save(sys.argv[2], y)

@njit
def total(a):  # then a compilation in the same process, which needs every registry
    s = 0.0
    for v in np.sort(a.ravel()):
        s += v
    return s

assert abs(total(y) - float(y.astype(np.float64).sum())) < 1e-4
stream = model.stream(2)  # more cached kernels after the compilation
assert (np.stack([stream.step(np.ones((2, 3), np.float32)) for _ in range(4)]) == y).all()
print("ok")
"""


def test_cached_kernels_load_without_numbas_registries(rng, tmp_path):
    """A warm-cache process loads its kernels without installing Numba's typing and lowering
    registries (half of a cached first call, issue 30; kernels/runtime.py), computes what the
    same model computes in this process, and can still compile new code afterwards."""
    path = tmp_path / "m.safetensors"
    model = fastgru.GRU(random_spec(rng, 3, 4, 2))
    model.save(path)
    model(np.ones((4, 2, 3), np.float32))  # this process warms the cache
    for _ in range(2):  # the first child may still compile what this process did not
        result = subprocess.run([sys.executable, "-c", CACHED_THEN_COMPILED, str(path),
                                 str(tmp_path / "y.npy")], capture_output=True, text=True,
                                timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"),
                                  model(np.ones((4, 2, 3), np.float32))[0])
