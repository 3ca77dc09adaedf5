"""User-facing input defects left by earlier sessions (session 33): ``tools/train.py -m --cfg job``
printing hydra's traceback, ..."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ 1. -m --cfg job
def test_tools_train_refuses_two_hydra_commands_in_one_line(tmp_path):
    """Hydra 1.3 runs one command at a time (-m, --cfg, --info, -r, -sc) and raised a ValueError
    for ``-m --cfg job`` that @hydra.main printed as a 6-line traceback (status 1). Now one line
    naming the flags and how to see one sweep job's config, status 2, nothing written."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "-m", "--cfg", "job", "seed=0,1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("tools/train.py: ConfigError: tools/train.py: field '--cfg': expected one of hydra's commands "
                               "(-m, --cfg, --info, -r, -sc) at a time; a sweep job's config: --cfg job with that job's overrides"), lines
    assert lines[0].endswith("got -m/--multirun --cfg job"), lines
    assert not any(tmp_path.iterdir())


def test_check_hydra_commands_refuses_pairs_and_a_lone_resolve():
    from dense3d.engine.train import check_hydra_commands
    from dense3d.errors import ConfigError

    for ok in (["-m", "seed=0,1"], ["--cfg", "job", "--resolve", "seed=0"], ["-c", "all"], ["--info"], ["-r", "seed=1"],
               ["--cfg"], ["--version"]):  # argparse exits for these: left to hydra, which prints them
        check_hydra_commands(ok)
    with pytest.raises(ConfigError, match=r"field '--info': .* got --cfg job --info all$"):
        check_hydra_commands(["--cfg", "job", "--info"])
    with pytest.raises(ConfigError, match=r"field '--cfg': .* got -m/--multirun --cfg hydra$"):
        check_hydra_commands(["--multirun", "-c", "hydra"])
    with pytest.raises(ConfigError, match=r"field '--resolve': expected --cfg job\|hydra\|all with it"):
        check_hydra_commands(["--resolve", "seed=1"])
