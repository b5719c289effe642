#!/usr/bin/env python
"""Export a GRU checkpoint (.pt/.pth/.bin/.safetensors, or a fastgru file) to ONNX.

    python tools/export_onnx.py encoder.pt encoder.onnx

The graph has one GRU node per layer, as torch.onnx.export writes it, and runs in onnxruntime
with fastgru's results; `fastgru check encoder.onnx` confirms it. Same as `fastgru convert`.
"""

import sys

from fastgru.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
