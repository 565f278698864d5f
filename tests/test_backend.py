"""The backend helpers that are more than a one-line dispatch."""

import numpy as np
import pytest
import threadpoolctl

from minigpt.backend import blas_threads, get_xp, scatter_add, to_host


@pytest.mark.parametrize("n, repeats", [(0, 1), (1, 1), (50, 3), (200, 40)])
def test_scatter_add_accumulates_repeated_rows(device, n, repeats):
    xp = get_xp(device)
    rng = np.random.default_rng(n)
    indices = rng.integers(0, max(n // repeats, 1), n)  # many repeats when `repeats` is large
    values = rng.standard_normal((n, 5))
    target = rng.standard_normal((max(n // repeats, 1) + 2, 5))
    expected = target.copy()
    np.add.at(expected, indices, values)
    out = xp.asarray(target)
    scatter_add(xp, out, xp.asarray(indices), xp.asarray(values))
    np.testing.assert_allclose(to_host(out), expected, rtol=1e-12, atol=1e-12)


def test_blas_threads_limits_numpy_blas():
    with blas_threads(1):
        info = threadpoolctl.threadpool_info()
        assert [lib for lib in info if lib["user_api"] == "blas"]
        assert all(lib["num_threads"] == 1 for lib in info if lib["user_api"] == "blas")
