"""Shared fixtures and the `cuda` / `slow` markers.

* ``slow``: long tests; ``make test-fast`` skips them, CI runs them.
* ``cuda``: need a GPU; without one they are skipped *loudly* (a banner in the summary).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dense3d.utils.env import samples_dir

CUDA = torch.cuda.is_available()
# The converted SmolLM2 (dense3d.models.captioner.decoder.load_smollm2) goes to the checkout's
# git-ignored build/ rather than the user's ~/.cache, unless DENSE3D_CACHE says otherwise.
os.environ.setdefault("DENSE3D_CACHE", str(Path(__file__).resolve().parents[1] / "build" / "test-cache"))
_SKIPPED_CUDA: list[str] = []


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="CUDA test: no GPU on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
            _SKIPPED_CUDA.append(item.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _SKIPPED_CUDA:
        tr = terminalreporter
        tr.section("CUDA TESTS SKIPPED", sep="!", red=True, bold=True)
        tr.write_line(f"{len(_SKIPPED_CUDA)} tests marked `cuda` did not run: no GPU here. Run them on a GPU machine:")
        tr.write_line("    .venv/bin/python -m pytest -m cuda")


@pytest.fixture(scope="session")
def samples() -> Path:
    """The real sensor samples (../shared/samples); tests needing them skip loudly without."""
    d = samples_dir()
    if d is None:
        msg = "real samples not found: put them in ../shared/samples or set DENSE3D_SAMPLES"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI has shared/ beside the checkout: a missing folder is a set-up bug
        pytest.skip(msg)
    return d
