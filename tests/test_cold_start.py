"""Reading an ONNX file must not import the onnx package (most of a cold start, issue 30), and a
later `import onnx` must share the message classes fastgru loaded."""

from __future__ import annotations

import subprocess
import sys

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
