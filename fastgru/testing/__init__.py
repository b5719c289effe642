"""Test helpers shipped with the package, as numpy.testing is, shared by the test suite, tools/
and bench/:

- ``reference``: the slow float64 GRU written from the equations, the independent oracle;
- ``models``: random weights as a GRUSpec, a one-node ONNX model of it, onnxruntime's answer;
- ``asserts``: assert_close at the tolerance of the model's dtype;
- ``torch_models``: a seeded torch.nn.GRU, its outputs as arrays, whole networks and their export;
- ``trained``: small GRUs trained in a few seconds, for long-sequence accuracy;
- ``fuzz_onnx``, ``fuzz_keras``: the differential fuzzers that check fastgru's readers against
  the model's own runtime (``fuzz_onnx`` against onnxruntime).

They need the test extra (``pip install fastgru[test]``): onnxruntime, and what each oracle runs.
"""
