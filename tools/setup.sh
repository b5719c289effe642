#!/usr/bin/env bash
# Create .venv (if missing) and install fastgru with everything its tests and benchmarks use.
# torch is pinned to the CPU build that lies on these machines; a looser pin would make pip
# download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,bench]"
