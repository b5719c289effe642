"""Say when compiling (issue 30): the first compilation on a CPU is announced once, on the
"fastgru" logger (stderr unless the application's logging says otherwise); a warm cache says
nothing; `fastgru warmup` compiles ahead of time and shows a line per kernel group.

The notice is logged, not warned, so this suite's warnings-as-errors never turns a first call
into an exception and needs no filter for it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

import fastgru
from fastgru.cli import main

NOTICE = "fastgru: compiling its kernels for this CPU"

# two compilations of one small kernel: the notice must come once, before the first
COMPILE_TWICE = """
import numpy as np
from fastgru.kernels import products
for dtype in (np.float32, np.float64):
    out = np.zeros((2, 4), dtype)
    products.dot_rows(np.ones((2, 3), dtype), np.ones((4, 3), dtype), out)
print(out.sum())
"""


def _in_fresh_process(args, cache_dir, **env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), **env})


def test_the_first_compile_says_so_once_and_a_warm_cache_says_nothing(tmp_path):
    cold = _in_fresh_process(["-c", COMPILE_TWICE], tmp_path)
    assert cold.returncode == 0 and cold.stdout.strip() == "24.0", cold.stderr[-2000:]
    assert cold.stderr.count(NOTICE) == 1, cold.stderr
    notice = next(line for line in cold.stderr.splitlines() if NOTICE in line)
    for said in ("once", "tens of seconds", str(tmp_path), "fastgru warmup"):
        assert said in notice, notice
    warm = _in_fresh_process(["-c", COMPILE_TWICE], tmp_path)
    assert warm.returncode == 0 and NOTICE not in warm.stderr, warm.stderr
    # an application that configured its logging decides: here, fastgru's warnings are off
    quiet = "import logging; logging.getLogger('fastgru').setLevel(logging.ERROR)\n"
    silenced = _in_fresh_process(["-c", quiet + COMPILE_TWICE], tmp_path / "other")
    assert silenced.returncode == 0 and silenced.stderr == "", silenced.stderr


def test_warmup_logs_a_line_per_kernel_group(caplog):
    with caplog.at_level(logging.INFO, logger="fastgru"):
        fastgru.warmup(["float64"])
    lines = [r.getMessage() for r in caplog.records if r.name == "fastgru"]
    assert [line.split(" in ")[0] for line in lines if line.startswith("fastgru warmup:")] == \
        ["fastgru warmup: float64 kernels ready"]


def test_warmup_command_prints_progress():
    done = subprocess.run([sys.executable, "-m", "fastgru.cli", "warmup", "--dtype", "float32"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""
    progress = [line for line in done.stderr.splitlines() if line.startswith("fastgru warmup:")]
    assert len(progress) == 1 and progress[0].startswith("fastgru warmup: float32 kernels "
                                                          "ready in "), done.stderr


def test_warmup_command_refuses_an_unknown_dtype(capsys):
    assert main(["warmup", "--dtype", "float32,float16"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "fastgru warmup: error:" in err, err


@pytest.mark.slow
def test_warmup_command_on_a_fresh_cache(tmp_path):
    """An image build step: everything compiles, announced once, a line per group; a process
    after it compiles nothing."""
    cold = _in_fresh_process(["-m", "fastgru.cli", "warmup", "--dtype", "float32", "--clip"],
                             tmp_path)
    assert cold.returncode == 0, cold.stderr[-2000:]
    lines = cold.stderr.splitlines()
    assert sum(NOTICE in line for line in lines) == 1 and NOTICE in lines[0], cold.stderr
    assert [line.split(" ready in ")[0] for line in lines[1:]] == \
        ["fastgru warmup: float32 kernels", "fastgru warmup: float32 kernels with a clip"]
    # every kernel a model runs: rows shared out (B=40), units shared out (B=1), the serial
    # small-batch kernel (B=3), a stream step, with and without a clip
    after = _in_fresh_process(["-c", """if True:
        import dataclasses, numpy as np, fastgru
        from fastgru.testing.models import random_spec
        rng = np.random.default_rng(0)
        spec = random_spec(rng, 5, 300, num_layers=2)
        for model in (fastgru.GRU(spec), fastgru.GRU(dataclasses.replace(spec, clip=1.0))):
            for batch in (1, 3, 40):
                model(rng.standard_normal((4, batch, 5)))
            model.stream(2).step(np.zeros((2, 5)))
        """], tmp_path)
    assert after.returncode == 0 and NOTICE not in after.stderr, after.stderr
