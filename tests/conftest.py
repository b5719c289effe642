"""The suite's seeded generator. The models, the float64 reference, assert_close and the
trained-like networks are shared with tools/ and bench/ from fastgru.testing."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)
