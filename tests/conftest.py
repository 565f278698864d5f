"""Shared test helpers: the devices to run on, and central finite differences in float64 (minigpt.gradcheck)."""

import pytest

from minigpt.backend import gpu_available
from minigpt.gradcheck import numerical_grad, rel_error  # noqa: F401 (the tests import them from here)

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
