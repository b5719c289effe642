"""One case's check: every entry point against onnxruntime, within a time limit, on one
thread; the failures described in a FuzzFailure."""

from __future__ import annotations

import contextlib
import os
import tempfile

from fastgru.testing.limits import CaseTimeout, time_limit

from .case import CASE_SECONDS, Case, FuzzFailure
from .check_models import ModelCheck
from .check_session import SessionCheck
from .describe import describe
from .generate import generate


class Checker(SessionCheck, ModelCheck):
    def run(self) -> dict:
        import fastgru

        self.reference()
        self.check_session()
        with tempfile.TemporaryDirectory(prefix="fuzz_onnx") as folder:
            path = os.path.join(folder, "model.onnx")
            with open(path, "wb") as f:
                f.write(self.data)
            self.check_whole("load", lambda: fastgru.load(path))
        self.check_whole("from_onnx", lambda: fastgru.GRU.from_onnx(self.copy()))
        self.check_nodes()
        return self.outcomes


@contextlib.contextmanager
def _one_thread():
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def check(case: Case, seconds: float = CASE_SECONDS) -> dict:
    """Every entry point on `case` against onnxruntime: {entry point: "refused" | "matched"};
    FuzzFailure on any failure, GeneratorError when onnxruntime cannot run the graph."""
    checker = Checker(case)
    try:
        with time_limit(seconds), _one_thread():
            outcomes = checker.run()
    except CaseTimeout as error:
        checker.fail("hang", str(error))
        outcomes = checker.outcomes
    if checker.failures:
        raise FuzzFailure(describe(case, checker.failures), case.seed, checker.failures,
                          case.model)
    return outcomes


def run_case(seed: int) -> dict[str, str]:
    """Generate the graph of `seed` and check every entry point on it (see the module's
    docstring)."""
    return check(generate(seed))
