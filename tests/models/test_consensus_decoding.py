"""Consensus (minimum Bayes risk) decoding: of a region's decoded caption and its samples, the one
that agrees most with the others (``consensus_pick``, ``RegionCaptioner(consensus_samples=S)``)."""
from __future__ import annotations

import pytest
import torch

from dense3d.errors import ConfigError
from dense3d.models.captioner.decoder import tiny_llama_decoder
from dense3d.models.captioner.generate import consensus_pick, generate_captions
from dense3d.models.captioner.llama_adapter import LlamaAdapter
from dense3d.models.captioner.qformer import RelationQFormer
from dense3d.models.captioner.region_captioner import RegionCaptioner
from dense3d.models.losses.caption import CiderDocumentFrequency, cider_d
from dense3d.structures.sample import RegionFeatures

OTHER_REGIONS = [["a blue truck standing near the road"] * 3, ["a gray barrier placed far away"] * 3]


def test_the_caption_most_samples_agree_with_wins():
    """The greedy caption states "parked"; three of four samples say "moving": the pick is a
    "moving" caption, and of those the one whose other words the rest share."""
    cands = [["a red car parked in front of the ego car",
              "a red car moving in front of the ego car",
              "a red car moving in front of the ego car, far away",
              "a red car moving behind the ego car",
              "a red car moving in front of the ego car"]] + OTHER_REGIONS
    picks = consensus_pick(cands)
    assert picks[0] in (1, 4)  # the two copies of the majority caption score alike ...
    assert picks[0] == 1  # ... and the tie goes to the first
    assert picks[1:] == [0, 0]  # identical candidates: the first


def test_utility_is_the_mean_cider_d_against_the_regions_other_candidates():
    cands = [["a red car parked near the road", "a red car moving near the road", "a blue car moving far away"],
             ["a truck standing", "a truck standing far away"]]
    df = CiderDocumentFrequency.from_references(cands)
    want = []
    for c in cands:
        u = [cider_d([h], [c[:i] + c[i + 1:]], df).item() for i, h in enumerate(c)]
        want.append(max(range(len(c)), key=lambda i: (u[i], -i)))
    assert consensus_pick(cands) == want
    assert consensus_pick(cands, df) == want  # the same frequencies given: the same picks


def test_frequencies_from_a_corpus_and_the_edge_cases():
    corpus = CiderDocumentFrequency.from_references([["a red car parked"], ["a blue truck moving"], ["a gray car moving"],
                                                     ["a red bus parked far away"]])
    one = [["a red car parked", "a red car moving", "a red car moving"]]
    assert consensus_pick(one) == [1]  # one region: each candidate a document, and the majority wins
    assert consensus_pick(one, corpus) == [1]  # a corpus weighs them too
    assert consensus_pick([["only one"], ["a", "a"]]) == [0, 0]
    with pytest.raises(ConfigError, match="consensus_pick.*candidates.*at least one caption per region"):
        consensus_pick([["a red car"], []])


VOCAB = ["describe the object. a red blue car truck near far road parked moving standing"]


def _captioner(samples: int, temperature: float = 1.5) -> RegionCaptioner:
    torch.manual_seed(0)
    model = RegionCaptioner(decoder=tiny_llama_decoder(VOCAB, hidden_size=32),
                            adapter=LlamaAdapter(32, 4, num_layers=2, prompt_len=4),
                            qformer=RelationQFormer(32, 4, 1, num_queries=4, num_neighbours=0, region_dim=16, out_dim=32),
                            max_new_tokens=6, consensus_samples=samples,
                            consensus_temperature=temperature if samples else 1.0)
    with torch.no_grad():
        model.adapter.gates.fill_(0.5)
    return model.eval()  # no dropout: the encoded tokens are the same on every call


def _regions() -> RegionFeatures:
    g = torch.Generator().manual_seed(3)
    geometry = torch.cat([torch.randn(2, 3, 3, generator=g) * 5, torch.ones(2, 3, 3), torch.zeros(2, 3, 1)], -1)  # (B, R, 7)
    mask = torch.tensor([[True, True, False], [True, False, True]])  # a padding slot in each scene
    return RegionFeatures("box", torch.randn(2, 3, 16, generator=g), geometry, torch.full((2, 3), 0.9),
                          torch.zeros(2, 3, dtype=torch.long), mask)


def _texts(model, regions) -> list[str]:
    return [c.text for scene in model.generate(regions) for c in scene]


def test_the_captioner_keeps_each_regions_consensus_of_its_own_samples():
    """Each real region's caption is the pick among its greedy caption and its own S samples (rows
    n*S .. n*S+S-1 of the sampled batch, drawn from the seeded generator); the same captions on
    every call, and the caller's random stream untouched."""
    regions, S = _regions(), 5
    greedy = _texts(_captioner(0), regions)
    model = _captioner(S)
    torch.manual_seed(123)
    got = _texts(model, regions)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # generate drew nothing from the global stream

    vis = model.encode(regions, None)[0][regions.mask]  # (4, K, H) the real regions, row-major
    lm, tok = model._lm(), model.decoder.tokenizer
    torch.manual_seed(0)
    with model._precision():  # bfloat16 autocast where the CPU has it, as generate runs
        sampled, _ = generate_captions(lm, model.adapter, tok, vis.repeat_interleave(S, 0), model.prompts["box"], 6,
                                       do_sample=True, temperature=1.5)
    cands = [[greedy[n]] + sampled[n * S : (n + 1) * S] for n in range(4)]
    assert len({c for row in cands for c in row}) > 4  # the samples differ: the test can tell rows apart
    want = [c[k] for c, k in zip(cands, consensus_pick(cands))]
    assert got == want
    assert got != greedy  # here at least one region keeps a sample
    assert _texts(model, regions) == got  # seeded at every call


def test_consensus_settings_are_checked():
    with pytest.raises(ConfigError, match="RegionCaptioner.*consensus_samples.*integer >= 0"):
        _captioner(-1)
    with pytest.raises(ConfigError, match="RegionCaptioner.*consensus_temperature.*> 0"):
        _captioner(2, temperature=0.0)
