"""Test helpers shipped with the package, as numpy.testing is: the differential fuzzers that
check fastgru's readers against the model's own runtime (``fuzz_onnx`` against onnxruntime).

They need the test extra (``pip install fastgru[test]``): onnxruntime, and what each oracle runs.
"""
