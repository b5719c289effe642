"""A benchmark worker process (fastgru.benchmark.runner starts one per measurement)."""

import sys

from fastgru.benchmark.runner import worker_main

sys.exit(worker_main(sys.argv[1:]))
