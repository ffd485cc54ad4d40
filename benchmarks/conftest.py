"""Shared benchmark fixtures (sizes live in ``sizes.py``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the benchmark with one torch thread (reproducible ratios on a shared 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
