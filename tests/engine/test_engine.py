"""Engine mechanics: DDP averages gradients like one process on the combined batch, and a
run killed with SIGKILL resumes to exactly the weights of an uninterrupted run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("toy_train.py")
REPO = Path(__file__).resolve().parents[2]


def _run(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_kill_dash_nine_then_resume_matches_uninterrupted_run(tmp_path):
    _run(tmp_path / "a", "--epochs", 4)
    r = _run(tmp_path / "b", "--epochs", 4, "--kill-at-epoch", 2, check=False)
    assert r.returncode == -9, "the run should have been killed"
    assert not (tmp_path / "b" / "final.pt").exists()
    assert (tmp_path / "b" / "ckpt" / "last.ckpt" / "model.safetensors").exists()
    _run(tmp_path / "b", "--epochs", 4, "--resume")
    a = torch.load(tmp_path / "a" / "final.pt")
    b = torch.load(tmp_path / "b" / "final.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_two_process_ddp_gradients_equal_one_process_on_combined_batch(tmp_path):
    _run(tmp_path / "ddp", "--ddp", "--grads", "--batch-size", 4)
    _run(tmp_path / "one", "--grads", "--batch-size", 8)
    g2 = torch.load(tmp_path / "ddp" / "grads.pt")
    g1 = torch.load(tmp_path / "one" / "grads.pt")
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-5, atol=1e-6)
