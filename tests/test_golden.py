"""The golden toy runs (tests/golden_runs.py) give the pinned metrics: a refactor of the run pipeline changes no
number. Floats to 1e-10 relative (other CPUs' rounding in a short run below chaos), counts exactly."""

import json

import numpy as np
import pytest

from golden_runs import PATH, RUNS, run

GOLDEN = json.loads(PATH.read_text())


@pytest.mark.parametrize("name", list(RUNS))
def test_golden_toy_run(name):
    want, got = GOLDEN[name], run(name)
    assert got["status"] == want["status"]
    for m, columns in want["metrics"].items():
        assert set(got["metrics"][m]) == set(columns), m
        for c, values in columns.items():
            a = np.array([np.nan if v is None else v for v in got["metrics"][m][c]], float)
            b = np.array([np.nan if v is None else v for v in values], float)
            if c in ("grad_evals", "hvps", "d3"):
                np.testing.assert_array_equal(a, b, err_msg=f"{name} {m} {c}")
            else:
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13, equal_nan=True, err_msg=f"{name} {m} {c}")
