"""Shared test helpers: the devices to run on, and central finite differences in float64."""

import numpy as np
import pytest

from minigpt.backend import gpu_available, to_host

DEVICES = ["cpu"] + (["gpu"] if gpu_available() else [])


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    """Every test prepares data and downloads checkpoints in its own temporary folders, never in the repo's."""
    monkeypatch.setenv("MINIGPT_CHECKPOINTS_DIR", str(tmp_path / "checkpoints"))
    folder = tmp_path / "data"
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(folder))
    return folder


@pytest.fixture(params=DEVICES)
def device(request):
    """Every test that can run on CuPy takes this fixture and runs once per available device."""
    return request.param


def numerical_grad(f, x, h=1e-5, indices=None):
    """Central differences (f(x+h) - f(x-h)) / 2h of scalar f() w.r.t. array x, changed in place.

    x may be a NumPy or a CuPy array (entries are perturbed where x lives); the
    result is a NumPy array. `indices` (flat positions) limits the check to some
    entries of a large x; the other entries of the result are NaN.
    """
    flat = x.reshape(-1)
    grad = np.full(flat.shape, np.nan)
    for i in range(flat.size) if indices is None else indices:
        old = float(flat[i])
        flat[i] = old + h
        f_plus = float(f())
        flat[i] = old - h
        f_minus = float(f())
        flat[i] = old
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad.reshape(x.shape)


def rel_error(analytic, numeric):
    """max |a - n| / max(|a|, |n|) over the vector: ||a - n|| / max(||a||, ||n||) with the max norm."""
    a, n = to_host(analytic).astype(np.float64).ravel(), np.asarray(to_host(numeric), np.float64).ravel()
    keep = ~np.isnan(n)
    a, n = a[keep], n[keep]
    scale = max(np.abs(a).max(), np.abs(n).max(), 1e-12)
    return float(np.abs(a - n).max() / scale)
