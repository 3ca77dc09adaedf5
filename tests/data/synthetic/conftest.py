"""Small synthetic data sets, generated once per test session."""
from __future__ import annotations

import pytest

from dense3d.data.synthetic import SynthConfig, generate

SCENES = {"outdoor": 4, "indoor": 4, "av": 4}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """``root/{outdoor,indoor,av}`` made with seed 0 (splits: 2 train, 1 val, 1 test)."""
    root = tmp_path_factory.mktemp("synth")
    for kind, n in SCENES.items():
        generate(SynthConfig(kind=kind, scenes=n, seed=0), root / kind)
    return root
