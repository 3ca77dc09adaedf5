"""``stage=scst model.captioner.scst_samples=k``: a training run with k samples a region logs the
samples' reward and their baseline (the mean of the region's other samples), no test-time reward."""
from __future__ import annotations

import pytest

from tests.engine.test_scst_corpus33 import _build


@pytest.mark.slow
def test_a_k_sample_scst_stage_logs_the_sample_and_baseline_rewards(synthetic_root, tmp_path):
    module, dm, trainer = _build(synthetic_root, tmp_path, "model.captioner.scst_samples=3")
    assert module.model.captioner.scst_samples == 3
    trainer.fit(module, dm)
    metrics = trainer.callback_metrics
    assert metrics["train/scst_reward_sample"] >= 0 and metrics["train/scst_reward_baseline"] >= 0
    assert "train/scst_reward_greedy" not in metrics
