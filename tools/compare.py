#!/usr/bin/env python
"""Compare a model file's outputs between fastgru, onnxruntime and (for PyTorch files) PyTorch.

    python tools/compare.py encoder.pt [--batch 3] [--seq 20] [--seed 0]

Prints the maximum absolute difference per runtime and exits 1 when one exceeds
1e-5 + 1e-4*|reference|. Same as `fastgru check`.
"""

import sys

from fastgru.cli import main

if __name__ == "__main__":
    sys.exit(main(["check", *sys.argv[1:]]))
