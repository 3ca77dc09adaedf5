"""ClassifierFusion: a classifier chooses among phrase groups where the LLM states one
(``RegionCaptioner(motion_fusion=w)``)."""
from __future__ import annotations

import pytest
import torch

from dense3d.errors import ConfigError
from dense3d.models.captioner.decoder import tiny_llama_decoder, word_tokenizer
from dense3d.models.captioner.generate import (ClassifierFusion, candidates_by_loop, generate_captions,
                                               phrase_first_tokens, phrase_token_sequences)
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


def _tiny_captioner(num_neighbours: int, settings) -> tuple[RegionCaptioner, list[list[str]]]:
    """A tiny captioner (car / truck boxes, gates open) with ``settings(phrases)``'s arguments,
    ``phrases`` the vocabulary's words in two groups (:func:`_halves`); and the groups."""
    torch.manual_seed(0)
    decoder = tiny_llama_decoder(VOCAB, hidden_size=32)
    phrases = _halves(decoder.tokenizer)
    model = RegionCaptioner(decoder=decoder, adapter=LlamaAdapter(32, 4, num_layers=2, prompt_len=4),
                            qformer=RelationQFormer(32, 4, 1, num_queries=4, num_neighbours=num_neighbours, region_dim=16,
                                                    out_dim=32),
                            class_names={"box": ["car", "truck"]}, max_new_tokens=8, **settings(phrases))
    with torch.no_grad():
        model.adapter.gates.fill_(0.5)
    return model, phrases


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
        return _tiny_captioner(0, lambda phrases: dict(
            motion_phrases={"even": phrases[0], "odd": phrases[1]}, motion_fusion=fusion, consensus_samples=consensus,
            consensus_temperature=2.0 if consensus else 1.0))

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
        _tiny_captioner(0, lambda phrases: dict(motion_fusion=0.5))
    with pytest.raises(ConfigError, match="motion_fusion.*\\[0, 1\\]"):
        captioner(2.0)


# phrases of several tokens: "to the left" (10 11 12), "to the right" (10 11 13), "between" (14);
# 99 is the token after which a phrase may begin (a comma), the prompt is two tokens
PHRASES = [[(10, 11, 12)], [(10, 11, 13)], [(14,)]]


def _step(generated: list[int], scores: torch.Tensor, q: torch.Tensor, weight: float = 1.0, after=(99,),
          prompt=(99, 10, 11)) -> torch.Tensor:
    """The fused (V,) scores of one row that has generated ``generated`` after ``prompt``, which
    looks like the middle of a phrase: if it were read as caption, "left" / "right" would be next."""
    ids = torch.tensor([list(prompt) + generated])
    return ClassifierFusion(PHRASES, q[None], weight, after=after, prompt_length=len(prompt))(ids, scores[None])[0]


def test_fusion_follows_phrases_token_by_token_and_chooses_where_they_part():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(20, generator=g) * 2  # (V,)
    p = scores.softmax(-1)
    q = torch.tensor([0.7, 0.1, 0.2])
    others = [t for t in range(20) if t not in (10, 14)]
    # the caption's start: "to" leads to both "to the ..." groups and carries both their shares
    f = _step([], scores, q).softmax(-1)
    mass = p[10] + p[14]
    torch.testing.assert_close(f[10], 0.8 * mass)
    torch.testing.assert_close(f[14], 0.2 * mass)
    torch.testing.assert_close(f[others], p[others])
    # after "to the": only "left" / "right" are candidates, and the classifier's answer between
    # those two groups, renormalised, chooses; "to" and "between" cannot begin here
    f = _step([10, 11], scores, q).softmax(-1)
    torch.testing.assert_close(f[[12, 13]].sum(), p[[12, 13]].sum())
    torch.testing.assert_close(f[12] / f[[12, 13]].sum(), torch.tensor(7 / 8))
    rest = [t for t in range(20) if t not in (12, 13)]
    torch.testing.assert_close(f[rest], p[rest])
    # the same after the "after" token; but not after any other token, nor anywhere once begun elsewhere
    torch.testing.assert_close(_step([5, 99, 10, 11], scores, q), _step([10, 11], scores, q))
    torch.testing.assert_close(_step([5, 10, 11], scores, q), scores)
    torch.testing.assert_close(_step([5], scores, q), scores)
    f = _step([5, 99], scores, q).softmax(-1)  # a new phrase may begin after the comma
    torch.testing.assert_close(f[14], 0.2 * mass)
    # after=None: a phrase may begin anywhere, but not inside another
    f = _step([5], scores, q, after=None).softmax(-1)
    torch.testing.assert_close(f[14], 0.2 * mass)
    torch.testing.assert_close(_step([10, 11], scores, q, after=None), _step([10, 11], scores, q))
    torch.testing.assert_close(_step([5, 10, 11], scores, q, after=None), _step([10, 11], scores, q))
    # weight 0 leaves every state as it is, shared tokens included
    for gen in ([], [10], [10, 11], [99, 10, 11], [7]):
        torch.testing.assert_close(_step(gen, scores, q, weight=0.0).softmax(-1), p)


def test_fusion_of_one_token_phrases_is_unchanged_by_the_state():
    """First tokens alone (the motion words) without ``after``: the same at every step."""
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 10, generator=g)
    q = torch.softmax(torch.randn(2, 3, generator=g), -1)
    f = ClassifierFusion(GROUPS, q, 1.0)
    as_ints = f(torch.tensor([[4, 4], [2, 9]]), scores)
    as_seqs = ClassifierFusion([[(t,) for t in ids] for ids in GROUPS], q, 1.0)(torch.zeros(2, 1, dtype=torch.long), scores)
    torch.testing.assert_close(as_ints, as_seqs)
    torch.testing.assert_close(as_ints, _fused(scores, q, 1.0))
    # the same through the step-by-step candidates (an "after" that every token is)
    stepped = ClassifierFusion(GROUPS, q, 1.0, after=range(10))
    assert stepped._static is None
    torch.testing.assert_close(stepped(torch.tensor([[4, 4], [2, 9]]), scores), as_ints)


@pytest.mark.parametrize("after", [None, (3, 9)])
def test_the_candidates_found_with_tensors_are_the_loops(after):
    """Phrases that share tokens, nest and repeat; random captions over a small vocabulary that
    hits them often; with and without ``after``; from the empty caption to past the longest phrase."""
    groups = [[(2, 4, 5, 6), (5, 6)], [(2, 4, 7, 6)], [(8,), (2, 8)], [(4,)], []]
    g = torch.Generator().manual_seed(0)
    fusion = ClassifierFusion(groups, torch.ones(6, len(groups)) / len(groups), 0.5, after=after)
    for L in range(7):
        for _ in range(40):
            gen = torch.randint(2, 10, (6, L), generator=g)  # (N, L)
            torch.testing.assert_close(fusion._membership(gen), candidates_by_loop(fusion, gen.tolist()))
    # groups without phrases: nothing is fused
    scores = torch.randn(2, 10, generator=g)
    torch.testing.assert_close(ClassifierFusion([[], []], torch.ones(2, 2) / 2, 1.0)(torch.zeros(2, 1, dtype=torch.long), scores), scores)
    # a caption in the middle of "2 4": only the continuations of the phrases it began
    torch.testing.assert_close(fusion._membership(torch.tensor([[9, 2, 4]]))[0].nonzero().tolist(), [[2, 0], [4, 1]])  # tokens 5 and 7


def test_phrase_token_sequences_are_the_phrases_tokens():
    tok = word_tokenizer(["describe the object. to the left right of between a car"])
    prompt = "Describe the object."
    seqs = phrase_token_sequences(tok, [["to the left of", "left of"], ["to the right of"], ["between"]], prompt)
    ids = tok.convert_tokens_to_ids
    assert seqs == [[tuple(ids(["to", "the", "left", "of"])), tuple(ids(["left", "of"]))],
                    [tuple(ids(["to", "the", "right", "of"]))], [tuple(ids(["between"]))]]
    with pytest.raises(ConfigError, match=r"test: field 'phrases'.*'between' is also in group 0"):
        phrase_token_sequences(tok, [["between"], ["between"]], prompt, source="test")
    with pytest.raises(ConfigError, match=r"test: field 'phrases'.*'behind' has the unknown token"):
        phrase_token_sequences(tok, [["behind"]], prompt, source="test")


def _relation_captioner(fusion: float, after=None, **kw):
    return _tiny_captioner(2, lambda phrases: dict(
        relation_phrases={"even": phrases[0], "odd": phrases[1]}, relation_input=True, relation_hint_tokens=False,
        relation_fusion=fusion, relation_fusion_after=after, **kw))


def test_relation_fusion_in_the_captioner_follows_the_relation_hint():
    """``RegionCaptioner(relation_fusion=1.0)``: the relation hint's answer among the relations
    (its "none" column left out, however sure) decides every group word the captions state; 0.0
    changes nothing; the settings it needs are checked."""
    g = torch.Generator().manual_seed(3)
    geometry = torch.cat([torch.randn(1, 3, 3, generator=g) * 5, torch.ones(1, 3, 3), torch.zeros(1, 3, 1)], -1)  # (B, R, 7)
    regions = RegionFeatures("box", torch.randn(1, 3, 16, generator=g), geometry, torch.full((1, 3), 0.9),
                             torch.tensor([[0, 1, 1]]), torch.ones(1, 3, dtype=torch.bool))

    def captions(model) -> list[str]:
        return [c.text for scene in model.generate(regions) for c in scene]

    want = captions(_relation_captioner(0.0)[0])
    for chosen in (0, 1):
        model, phrases = _relation_captioner(1.0)
        with torch.no_grad():  # a constant answer: "none" surest, then the chosen relation
            last = model.relation_head.classifier[-1]
            last.weight.zero_()
            last.bias.copy_(torch.tensor([10.0, -10.0, 30.0] if chosen == 0 else [-10.0, 10.0, 30.0]))
        got = captions(model)
        assert any(got)
        for text in got:
            assert set(w for w in text.split() if w.isalpha() and w not in ("describe", "the", "object")) <= set(phrases[chosen]), text
        assert got != want
        model.relation_fusion = 0.0  # the hint's map is zero: without fusion, the plain captions
        assert captions(model) == want
    with pytest.raises(ConfigError, match="relation_fusion.*relation_input"):
        _tiny_captioner(2, lambda phrases: dict(relation_fusion=0.5))
    with pytest.raises(ConfigError, match="relation_fusion.*\\[0, 1\\]"):
        _relation_captioner(-0.5)
    with pytest.raises(ConfigError, match="relation_fusion_after.*without relation_fusion"):
        _relation_captioner(0.0, after=[","])
    for after in (",", 1, [",", 2]):
        with pytest.raises(ConfigError, match="relation_fusion_after.*a list of texts"):
            _relation_captioner(1.0, after=after)
    with pytest.raises(ConfigError, match="relation_fusion_phrases.*for each of relation_phrases' names"):
        _relation_captioner(1.0, relation_fusion_phrases={"even": 5, "odd": []})
    with pytest.raises(ConfigError, match="relation_fusion_gate.*\"mass\" or \"top\""):
        _relation_captioner(1.0, relation_fusion_gate="all")
    with pytest.raises(ConfigError, match="motion_fusion_gate.*without motion_fusion"):
        _relation_captioner(1.0, motion_fusion_gate="top")
    with pytest.raises(ConfigError, match="relation_fusion_phrases.*for each of relation_phrases' names"):
        _relation_captioner(1.0, relation_fusion_phrases={"even": ["a"]})
    with pytest.raises(ConfigError, match="relation_fusion_phrases.*without relation_fusion"):
        _relation_captioner(0.0, relation_fusion_phrases={"even": ["a"], "odd": []})
    # the chosen relation's phrases left out: the one group left keeps the LLM's own split, nothing changes
    model, phrases = _relation_captioner(1.0, relation_fusion_phrases={"even": phrases[0], "odd": []})
    with torch.no_grad():
        model.relation_head.classifier[-1].weight.zero_()
        model.relation_head.classifier[-1].bias.copy_(torch.tensor([-10.0, 10.0, 0.0]))
    assert captions(model) == want
    model, _ = _relation_captioner(1.0, after=["red car"])
    with pytest.raises(ConfigError, match="relation_fusion_after.*one token each.*'red car' is 2 tokens"):
        model.generate(regions)
    model, phrases = _relation_captioner(1.0, after=["red"])  # a phrase may begin only first or after "red"
    with torch.no_grad():
        model.relation_head.classifier[-1].weight.zero_()
        model.relation_head.classifier[-1].bias.copy_(torch.tensor([10.0, -10.0, 0.0]))
    got = captions(model)
    assert any(got)
    for text in got:
        words = text.split()
        fused = [w for k, w in enumerate(words) if k == 0 or words[k - 1] == "red"]
        assert fused and set(fused) <= set(phrases[0]), text
    # elsewhere the LLM's own words stay (with after=None every word would be of the chosen group)
    assert any(set(t.split()) - set(phrases[0]) - {"describe", "the", "object"} for t in got), got


def test_the_top_gate_fuses_only_where_the_llms_most_likely_token_is_a_candidate():
    """gate="top": a row whose most likely token begins no phrase keeps its scores, though its
    groups' fused mass would outweigh that token under "mass"; a row whose top token is one is
    fused as under "mass"."""
    scores = torch.full((2, 10), -5.0)
    scores[0, [1, 5, 7]] = torch.tensor([1.0, 1.0, 1.0])  # three groups of 1/4 each ...
    scores[0, 3] = 1.2  # ... below another token, which leads the row
    scores[1, [1, 5, 7, 3]] = torch.tensor([2.0, 1.0, 1.0, 1.5])  # a group's token leads
    q = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mass = ClassifierFusion(GROUPS, q, 1.0)(torch.zeros(2, 1, dtype=torch.long), scores)
    top = ClassifierFusion(GROUPS, q, 1.0, gate="top")(torch.zeros(2, 1, dtype=torch.long), scores)
    assert mass[0].argmax() == 5  # "mass": the fused group now leads: a phrase the LLM would not state
    torch.testing.assert_close(top[0], scores[0])
    torch.testing.assert_close(top[1], mass[1])
    assert top[1].argmax() == 7
    with pytest.raises(ConfigError, match="ClassifierFusion.*gate"):
        ClassifierFusion(GROUPS, q, 1.0, gate="always")
