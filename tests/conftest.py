"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FIXTURES


@pytest.fixture
def graphcore() -> Path:
    folder = FIXTURES / "Graphcore"
    if not folder.is_dir():
        pytest.skip(f"the shared fixtures are not beside this checkout ({folder})")
    return folder
