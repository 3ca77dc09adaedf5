"""SCST's CIDEr-D reward with document frequencies from a corpus (``scst_document_frequency=train``)."""
from __future__ import annotations

import pytest
import torch

from dense3d.errors import ConfigError
from dense3d.models.losses.caption import CiderDocumentFrequency, cider_d

REFS = [["a brown chair by the wall", "the brown chair is by the wall"],
        ["a white table in the middle of the room"],
        ["a black door next to the window", "a black door"]]
HYPS = ["a brown chair by the wall", "a white table", "a door"]


def test_a_corpus_of_the_batch_itself_is_pycocoevalcaps_batch_count():
    batch = cider_d(HYPS, REFS)
    assert batch.shape == (3,) and (batch > 0).all()
    assert torch.equal(cider_d(HYPS, REFS, CiderDocumentFrequency.from_references(REFS)), batch)


def test_corpus_frequencies_weigh_ngrams_as_the_corpus_does():
    """An n-gram in every corpus document carries no weight (idf 0): a caption made only of it
    scores 0 against the corpus's frequencies, while the batch (where it is rare) rewards it."""
    refs = [["the chair by the wall"], ["a lamp on the desk"]]
    hyps = ["by the wall", "a lamp"]
    corpus = [["it is by the wall"]] * 50 + [["a lamp"]] * 2 + [["a sofa"]] * 48
    df = CiderDocumentFrequency.from_references(corpus)
    assert df.num_documents == 100 and df.counts[("by", "the", "wall")] == 50 and df.counts[("wall",)] == 50
    batch, by_corpus = cider_d(hyps, refs), cider_d(hyps, refs, df)
    assert batch[0] > 0 and batch[1] > 0
    assert by_corpus[1] > by_corpus[0] > 0  # "a lamp" is rarer in the corpus than "by the wall"
    common = CiderDocumentFrequency.from_references([["the chair by the wall"]] * 10)
    assert cider_d(["by the wall"], [["the chair by the wall"]], common).item() == 0.0


def test_documents_count_each_region_once_and_skip_regions_without_references():
    df = CiderDocumentFrequency.from_references([["A chair", "a chair by a chair"], [], ["a table"]])
    assert df.num_documents == 2
    assert df.counts[("a",)] == 2 and df.counts[("chair",)] == 1  # lower-cased, once per region


def test_scst_loss_rewards_with_the_captioners_corpus():
    """``RegionCaptioner.reward_document_frequency`` is what its SCST reward counts with: a corpus in
    which every n-gram of the references is in every document weighs them all 0, so every reward is 0."""
    from tests.models.test_captioner import oracle_scene, tiny_captioner

    regions, ctx, caps = oracle_scene()
    refs = [[[c, c.replace("a ", "one ")] for c in row] for row in caps]
    model = tiny_captioner()
    with torch.no_grad():
        model.adapter.gates.fill_(0.5)
    torch.manual_seed(0)
    by_batch = model.scst_loss(regions, ctx, refs)
    assert by_batch["reward_greedy"] > 0 or by_batch["reward_sample"] > 0
    every = [r for row in refs for r in row if r]
    model.reward_document_frequency = CiderDocumentFrequency.from_references([sum(every, [])] * 20)
    torch.manual_seed(0)
    by_corpus = model.scst_loss(regions, ctx, refs)
    assert by_corpus["reward_greedy"] == 0 and by_corpus["reward_sample"] == 0


def test_dense_captioner_refuses_an_unknown_frequency_source():
    from dense3d.models.dense_captioner import DenseCaptioner

    with pytest.raises(ConfigError, match="scst_document_frequency"):
        DenseCaptioner(box_detector=object(), scst_document_frequency="corpus")
