"""Small shared pieces of the engine tests: running ``toy_train.py`` in a subprocess, and a
dataset of 8 indices with a one-weight model for data-order and resume checks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("toy_train.py")
REPO = Path(__file__).resolve().parents[2]


def run_toy(*args, check: bool = True) -> subprocess.CompletedProcess:
    """``python toy_train.py ARGS`` with one OpenMP thread; fails the test on a non-zero exit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


class Indices(torch.utils.data.Dataset):
    """Sample i is (tensor([i]), tensor([0])): a batch's first column names its samples."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor([float(i)]), torch.zeros(1)


class Net(torch.nn.Module):
    """One linear weight and its MSE loss (DenseCaptionModule's model contract: a dict of losses)."""

    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(1, 1)

    def forward(self, batch):
        return {"mse": torch.nn.functional.mse_loss(self.l(batch[0]), batch[1])}
