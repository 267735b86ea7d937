"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fakes import FIXTURES


@pytest.fixture
def graphcore() -> Path:
    folder = FIXTURES / "Graphcore"
    if not folder.is_dir():
        pytest.skip(f"the shared fixtures are not beside this checkout ({folder})")
    return folder


@pytest.fixture
def one_thread():
    """Tiny shapes: one intra-op thread is as fast, and avoids OpenMP spin-waits on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
