"""One intra-op thread for these small batched problems: on a shared 2-core machine, two threads
spin against other processes and run ~4× slower. ``test_two_threads_batched_kkt`` sets 2 itself."""
import sys
from pathlib import Path

import pytest
import torch

# the tests import shared problems from sphere_problems.py (--import-mode=importlib adds no path)
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
