"""SCST with k samples per region (``model.captioner.scst_samples``): each sample's baseline is the
mean reward of its region's other samples (Luo 2020) instead of the test-time caption's reward."""
from __future__ import annotations

import pytest
import torch

import dense3d.models.captioner.region_captioner as region_captioner
from dense3d.errors import ConfigError
from dense3d.models.captioner.region_captioner import RegionCaptioner
from dense3d.models.losses.caption import CiderDocumentFrequency, cider_d, leave_one_out_baseline
from tests.models.test_captioner import oracle_scene, tiny_captioner


def test_each_baseline_is_the_mean_of_the_regions_other_samples():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])  # two regions, three samples each
    torch.testing.assert_close(leave_one_out_baseline(rewards, 3), torch.tensor([2.5, 2.0, 1.5, 10.0, 10.0, 10.0]))
    torch.testing.assert_close(leave_one_out_baseline(torch.tensor([4.0, 0.0]), 2), torch.tensor([0.0, 4.0]))
    for bad in (1, 4):  # one sample has no others; 6 rewards are not groups of 4
        with pytest.raises(ValueError, match="leave_one_out_baseline"):
            leave_one_out_baseline(rewards, bad)


def _decodes(monkeypatch, model, refs, regions, ctx, texts=None):
    """The (rows, sampled) of every generate_captions call one scst_loss makes, and its output;
    ``texts`` (a list) collects the sampled captions."""
    calls, real = [], region_captioner.generate_captions

    def recording(lm, adapter, tok, visual, *args, do_sample=False, **kw):
        calls.append((visual.shape[0], do_sample))
        out = real(lm, adapter, tok, visual, *args, do_sample=do_sample, **kw)
        if do_sample and texts is not None:
            texts.extend(out[0])
        return out

    monkeypatch.setattr(region_captioner, "generate_captions", recording)
    torch.manual_seed(0)
    return calls, model.scst_loss(regions, ctx, refs)


def test_k_samples_decode_k_rows_a_region_and_no_test_time_caption(monkeypatch):
    regions, ctx, caps = oracle_scene()
    refs = [[[c, c.replace("a ", "one ")] for c in row] for row in caps]
    model = tiny_captioner()
    with torch.no_grad():
        model.adapter.gates.fill_(0.5)
    calls, one = _decodes(monkeypatch, model, refs, regions, ctx)
    assert calls == [(8, False), (8, True)]  # Rennie: the test-time caption, then one sample a region
    assert "reward_greedy" in one and torch.equal(one["reward_greedy"], one["reward_baseline"])

    model.scst_samples = 4
    texts = []
    calls, four = _decodes(monkeypatch, model, refs, regions, ctx, texts)
    assert calls == [(32, True)]  # Luo: four samples a region, no test-time decode
    assert "reward_greedy" not in four
    # each sample scored as one sample of its region would be: document frequencies over the 8 regions
    gold = [r for row in refs for r in row]
    by_region = cider_d(texts, [g for g in gold for _ in range(4)], CiderDocumentFrequency.from_references(gold))
    assert len(set(texts)) > 1 and torch.isclose(four["reward_sample"], by_region.mean())
    # the leave-one-out baselines average to the samples' own mean
    torch.testing.assert_close(four["reward_baseline"], four["reward_sample"])
    assert torch.isfinite(four["loss_scst"])
    four["loss_scst"].backward()
    assert model.adapter.prompts.grad is not None and model.qformer.queries.grad is not None
    assert all(p.grad is None for p in model._lm().parameters())


def test_scst_samples_below_one_is_a_config_error():
    model = tiny_captioner()
    with pytest.raises(ConfigError, match="scst_samples"):
        RegionCaptioner(model.decoder, model.adapter, model.qformer, scst_samples=0)

