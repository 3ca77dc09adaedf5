"""Leftovers of earlier sessions: tools/train.py's one-line error for ``logger=null``, a negative
``dense3d convert synth --seed``, NMS at IoU thresholds 1.0 and 0.0 against torchvision, the same
error class for the same bad sparse conv input on every backend, and TOD3Cap ground truth's
``num_pts`` (LiDAR + radar points) in ``dense3d eval``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dense3d.engine.train import check_group_choices
from dense3d.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# -- 1. tools/train.py logger=null -------------------------------------------------------------

@pytest.mark.parametrize("flags", [[], ["-m"]], ids=["run", "multirun"])
def test_tools_train_refuses_a_null_group_choice_in_one_line(flags, tmp_path):
    """Hydra refused ``logger=null`` before ``main`` ran, with its own several-line report and
    status 1; now one line naming the override, status 2, as ``dense3d train`` gives."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), *flags, "logger=null", "trainer.max_steps=0"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("tools/train.py: ConfigError: configs/train.yaml: field 'override logger=null': "), r.stderr
    assert "~logger" in lines[0]
    assert not any(tmp_path.iterdir())  # nothing written


def test_check_group_choices_skips_flags_deletions_and_null_values():
    check_group_choices(["-m", "-cn", "train", "--config-name=train", "~logger", "trainer.max_steps=null", "seed=1"])
    with pytest.raises(ConfigError, match="override callbacks=null"):
        check_group_choices(["seed=1", "callbacks=null"])
    with pytest.raises(ConfigError, match="override model/encoder=null"):
        check_group_choices(["model/encoder=null"])


# -- 2. dense3d convert synth --seed -3 ----------------------------------------------------------

@pytest.mark.parametrize("seed", ["-3", "x"])
def test_convert_synth_refuses_a_negative_seed_naming_the_flag(seed, tmp_path, capsys):
    """A negative seed was refused only by SynthConfig, naming its field ('seed'), not the flag:
    now argparse's usage error names --seed, as ``dense3d demo --seed`` does, before any work."""
    from dense3d.cli import main

    with pytest.raises(SystemExit) as e:
        main(["convert", "synth", "--kind", "outdoor", "--out", str(tmp_path / "s"), "--scenes", "1", "--seed", seed])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"dense3d convert synth: error: argument --seed: expected an integer >= 0, got '{seed}'", err
    assert not (tmp_path / "s").exists()
