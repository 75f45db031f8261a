"""Strict numerics once for the whole suite: fixed seeds, float64 for gradient tests.

ddn's own warnings (``ddn.DDNWarning``) are errors (see ``filterwarnings`` in pyproject.toml):
a test that expects one must say so with ``pytest.warns``.
"""
import random

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.manual_seed(0)
        torch.set_default_dtype(torch.float32)
    yield


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip)
