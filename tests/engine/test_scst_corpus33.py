"""``stage=scst model.scst_document_frequency=train``: the training module hands the training set's
references to the model before the first step, and the reward counts its n-grams over them."""
from __future__ import annotations

import pytest

from dense3d.errors import ConfigError

TINY = ["model/captioner=tiny", "model.captioner.bica.region_dim=256", "model.captioner.bica.context_dim=64",
        "model.captioner.adapter.num_layers=2"]


def _build(synthetic_root, tmp_path, *extra):
    from dense3d.engine.train import build, compose_config

    cfg = compose_config(["experiment=demo", "stage=scst", f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={tmp_path}",
                          "trainer.max_steps=1", "logger=csv", *TINY, *extra])
    return build(cfg)


@pytest.mark.slow
def test_scst_with_training_frequencies_counts_every_training_region(synthetic_root, tmp_path, capsys):
    module, dm, trainer = _build(synthetic_root, tmp_path, "model.scst_document_frequency=train")
    assert module.model.captioner.reward_document_frequency is None  # nothing read before fitting
    trainer.fit(module, dm)
    df = module.model.captioner.reward_document_frequency
    refs = dm.train_set.reference_captions()
    assert df is not None and df.num_documents == len(refs) > 0
    assert f"references of {len(refs)} training regions" in capsys.readouterr().err
    assert trainer.callback_metrics["train/scst_reward_greedy"] >= 0


def test_the_batch_count_stays_the_default(synthetic_root, tmp_path):
    module, _, _ = _build(synthetic_root, tmp_path)
    assert module.model.scst_document_frequency == "batch" and not module.model.wants_reward_corpus


def test_an_unknown_frequency_source_is_one_config_line(synthetic_root, tmp_path):
    with pytest.raises(ConfigError, match="scst_document_frequency"):
        _build(synthetic_root, tmp_path, "model.scst_document_frequency=corpus")
