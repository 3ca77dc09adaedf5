"""ClassifierFusion: a classifier chooses among phrase groups where the LLM states one
(``RegionCaptioner(motion_fusion=w)``)."""
from __future__ import annotations

import pytest
import torch

from dense3d.errors import ConfigError
from dense3d.models.captioner.decoder import tiny_llama_decoder, word_tokenizer
from dense3d.models.captioner.generate import ClassifierFusion, generate_captions, phrase_first_tokens
from dense3d.models.captioner.llama_adapter import LlamaAdapter
from dense3d.models.captioner.qformer import RelationQFormer
from dense3d.models.captioner.region_captioner import RegionCaptioner
from dense3d.structures.sample import RegionFeatures

GROUPS = [[1, 2], [5], [7]]  # token ids per group


def _fused(scores: torch.Tensor, q: torch.Tensor, weight: float) -> torch.Tensor:
    return ClassifierFusion(GROUPS, q, weight)(torch.zeros(scores.shape[0], 1, dtype=torch.long), scores)


def test_fusion_keeps_the_llms_mass_and_every_other_token_and_moves_the_groups_shares():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 10, generator=g) * 2  # (N, V)
    q = torch.softmax(torch.randn(4, 3, generator=g), -1)  # (N, G)
    p = scores.softmax(-1)
    for w in (0.0, 0.5, 1.0):
        f = _fused(scores, q, w).softmax(-1)
        torch.testing.assert_close(f.sum(-1), torch.ones(4))
        others = [t for t in range(10) if t not in (1, 2, 5, 7)]
        torch.testing.assert_close(f[:, others], p[:, others])  # whether a group's phrase comes: the LLM's
        torch.testing.assert_close(f[:, [1, 2, 5, 7]].sum(-1), p[:, [1, 2, 5, 7]].sum(-1))
        torch.testing.assert_close(f[:, 1] / f[:, 2], p[:, 1] / p[:, 2])  # a group keeps the LLM's split
    torch.testing.assert_close(_fused(scores, q, 0.0).softmax(-1), p)  # weight 0: unchanged
    f = _fused(scores, q, 1.0).softmax(-1)
    share = torch.stack([f[:, 1] + f[:, 2], f[:, 5], f[:, 7]], -1) / f[:, [1, 2, 5, 7]].sum(-1, keepdim=True)
    torch.testing.assert_close(share, q)  # weight 1: which group, the classifier's alone
    # half way: the product of the two answers
    pg = torch.stack([p[:, 1] + p[:, 2], p[:, 5], p[:, 7]], -1)
    want = (pg * q).sqrt() / (pg * q).sqrt().sum(-1, keepdim=True)
    f = _fused(scores, q, 0.5).softmax(-1)
    torch.testing.assert_close(torch.stack([f[:, 1] + f[:, 2], f[:, 5], f[:, 7]], -1) / f[:, [1, 2, 5, 7]].sum(-1, keepdim=True),
                               want)


def test_fusion_leaves_masked_tokens_masked_and_rows_without_group_mass_alone():
    scores = torch.randn(2, 10)
    scores[0, [1, 2, 5, 7]] = -float("inf")  # an n-gram block or a penalty took every group token
    scores[1, 5] = -float("inf")  # one group masked: it stays impossible
    q = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.8, 0.1]])
    out = _fused(scores, q, 1.0)
    torch.testing.assert_close(out[0], scores[0])
    assert out.isfinite().sum() == 20 - 5
    assert not out.isnan().any()
    f, p = out.softmax(-1), scores.softmax(-1)
    assert f[1, 5] == 0  # the masked group stays impossible, and its share goes to the others, not away
    torch.testing.assert_close(f[1, [1, 2, 5, 7]].sum(), p[1, [1, 2, 5, 7]].sum())
    others = [t for t in range(10) if t not in (1, 2, 5, 7)]
    torch.testing.assert_close(f[1, others], p[1, others])
    torch.testing.assert_close((f[1, 1] + f[1, 2]) / f[1, 7], torch.tensor(0.1 / 0.1))  # q of the groups left


def test_fusion_checks_its_inputs():
    with pytest.raises(ConfigError, match="ClassifierFusion.*weight"):
        ClassifierFusion(GROUPS, torch.ones(2, 3) / 3, 1.5)
    with pytest.raises(ConfigError, match="ClassifierFusion.*probs.*one column per group"):
        ClassifierFusion(GROUPS, torch.ones(2, 4) / 4, 1.0)
    with pytest.raises(ConfigError, match="one row per generated sequence"):
        _fused(torch.randn(3, 10), torch.ones(2, 3) / 3, 1.0)


def test_phrase_first_tokens_are_the_words_first_tokens_and_a_shared_one_is_refused():
    tok = word_tokenizer(["describe the object. a car parked moving driving in front of next to"])
    groups = phrase_first_tokens(tok, [["parked"], ["moving", "driving", "Driving"]], "Describe the object.")
    assert groups == [tok.convert_tokens_to_ids(["parked"]), tok.convert_tokens_to_ids(["moving", "driving"])]
    with pytest.raises(ConfigError, match=r"test: field 'phrases'.*'in'"):
        phrase_first_tokens(tok, [["in front of"], ["next to", "in"]], "Describe the object.", source="test")
    with pytest.raises(ConfigError, match=r"test: field 'phrases'.*'walking' starts with the unknown token"):
        phrase_first_tokens(tok, [["parked"], ["walking"]], "Describe the object.", source="test")


VOCAB = ["describe the object. a red blue car truck near far road parked moving standing"]


def _halves(tok) -> list[list[str]]:
    """Every word of the vocabulary but the prompt's, in two groups of phrases."""
    words = sorted(w for w in tok.get_vocab() if w.isalpha() and w not in ("describe", "the", "object"))
    return [words[0::2], words[1::2]]


def test_generation_with_fusion_says_only_the_chosen_groups_words_in_each_row_beams_and_batches_alike():
    """Groups that cover the vocabulary: at weight 1 every word a row generates is from the group
    its classifier row chose; at weight 0 the captions are the plain ones."""
    decoder = tiny_llama_decoder(VOCAB, hidden_size=32)
    tok, lm = decoder.tokenizer, decoder.model
    adapter = LlamaAdapter(32, 4, num_layers=2, prompt_len=4)
    with torch.no_grad():
        adapter.gates.fill_(0.5)
    adapter.attach(lm)
    prompt = "Describe the object."
    phrases = _halves(tok)
    groups = phrase_first_tokens(tok, phrases, prompt)
    visual = torch.randn(4, 4, 32, generator=torch.Generator().manual_seed(1))  # (N, K, H)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    plain, _ = generate_captions(lm, adapter, tok, visual, prompt, max_new_tokens=8)
    same, _ = generate_captions(lm, adapter, tok, visual, prompt, max_new_tokens=8, fusion=ClassifierFusion(groups, q, 0.0))
    assert same == plain
    for beams, batch in ((1, None), (2, 3), (1, 1)):
        texts, _ = generate_captions(lm, adapter, tok, visual, prompt, max_new_tokens=8, num_beams=beams, batch_size=batch,
                                     fusion=ClassifierFusion(groups, q, 1.0))
        assert any(t for t in texts)
        for text, row in zip(texts, q.argmax(-1).tolist()):
            words = [w for w in text.split() if w.isalpha() and w not in ("describe", "the", "object")]
            assert set(words) <= set(phrases[row]), (beams, batch, text)


@pytest.mark.parametrize("consensus,batch", [(0, None), (3, None), (3, 1), (3, 2)])
def test_motion_fusion_in_the_captioner_follows_the_motion_hint(consensus, batch):
    """``RegionCaptioner(motion_fusion=1.0)``: the motion hint's classifier (made sure of one
    group per class here) decides every group word each box's caption states, row by row across a
    padded batch; 0.0 (default) changes nothing. With consensus decoding the samples are fused
    too, each with its own region's row, in batches of any size."""
    g = torch.Generator().manual_seed(3)
    geometry = torch.cat([torch.randn(2, 3, 3, generator=g) * 5, torch.ones(2, 3, 3), torch.zeros(2, 3, 1)], -1)  # (B, R, 7)
    labels = torch.tensor([[0, 1, 1], [1, 0, 0]])  # car, truck
    mask = torch.tensor([[True, True, False], [True, False, True]])  # a padding slot in each scene
    regions = RegionFeatures("box", torch.randn(2, 3, 16, generator=g), geometry, torch.full((2, 3), 0.9), labels, mask)

    def captioner(fusion: float) -> RegionCaptioner:
        torch.manual_seed(0)
        decoder = tiny_llama_decoder(VOCAB, hidden_size=32)
        phrases = _halves(decoder.tokenizer)
        model = RegionCaptioner(decoder=decoder, adapter=LlamaAdapter(32, 4, num_layers=2, prompt_len=4),
                                qformer=RelationQFormer(32, 4, 1, num_queries=4, num_neighbours=0, region_dim=16, out_dim=32),
                                class_names={"box": ["car", "truck"]}, max_new_tokens=8,
                                motion_phrases={"even": phrases[0], "odd": phrases[1]}, motion_fusion=fusion,
                                consensus_samples=consensus, consensus_temperature=2.0 if consensus else 1.0)
        with torch.no_grad():
            model.adapter.gates.fill_(0.5)
        return model, phrases

    def captions(model) -> list[tuple[str, str]]:
        return [(c.label, c.text) for scene in model.generate(regions, batch_size=batch) for c in scene]

    plain, _ = captioner(0.0)
    want = captions(plain)
    for flip in (False, True):  # cars -> the first group and trucks -> the second, then the other way
        model, phrases = captioner(1.0)
        with torch.no_grad():  # the answer from the class one-hot alone: hidden unit 0 is "car"
            first, middle, last = model.motion_hint.classifier[0], model.motion_hint.classifier[2], model.motion_hint.classifier[-1]
            for layer in (first, middle, last):
                layer.weight.zero_()
                layer.bias.zero_()
            first.weight[0, 0] = 1.0
            middle.weight[0, 0] = 1.0
            sign = -1.0 if flip else 1.0
            last.weight[:, 0] = torch.tensor([40.0, -40.0]) * sign
            last.bias.copy_(torch.tensor([-20.0, 20.0]) * sign)
        got = captions(model)
        assert len(got) == 4 and any(text for _, text in got)
        for label, text in got:
            chosen = phrases[(label == "car") == flip]
            assert set(w for w in text.split() if w.isalpha() and w not in ("describe", "the", "object")) <= set(chosen), (label, text)
    assert got != want
    model.motion_fusion = 0.0  # the hint's map is zero: without fusion, the plain model's captions
    assert captions(model) == want
    with pytest.raises(ConfigError, match="motion_fusion.*motion_phrases"):
        RegionCaptioner(decoder=tiny_llama_decoder(VOCAB, hidden_size=32), adapter=LlamaAdapter(32, 4, num_layers=2, prompt_len=4),
                        qformer=RelationQFormer(32, 4, 1, num_queries=4, num_neighbours=0, region_dim=16, out_dim=32),
                        motion_fusion=0.5)
    with pytest.raises(ConfigError, match="motion_fusion.*\\[0, 1\\]"):
        captioner(2.0)
