"""One METEOR Java process for the whole eval test session."""
from __future__ import annotations

import pytest

from dense3d.eval.caption_metrics import CaptionScorer


@pytest.fixture(scope="session")
def scorer():
    with CaptionScorer() as s:
        yield s
