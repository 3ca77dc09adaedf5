"""Shared fixtures of the engine tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from dense3d.data.synthetic import generate_default


@pytest.fixture(scope="session")
def synthetic_root() -> Path:
    """The demo's synthetic set, data/synthetic/default (generated once when missing or stale)."""
    root = Path("data/synthetic/default")
    generate_default(root)
    return root.resolve()
