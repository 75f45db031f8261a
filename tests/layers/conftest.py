"""Shared fixtures for the layer tests: run every torch test on the compiled kernel and on the
eager fallback (the kernel case skips, with the build error as reason, where it cannot be built)."""
import pytest

from ddn.torch import _kernels


@pytest.fixture(params=["kernel", "eager"])
def backend(request, monkeypatch):
    if request.param == "kernel":
        monkeypatch.setattr(_kernels, "ENABLED", True)
        if _kernels.lib() is None:
            pytest.skip(f"compiled kernel unavailable: {_kernels._state['error']}")
    else:
        monkeypatch.setattr(_kernels, "ENABLED", False)
    return request.param
