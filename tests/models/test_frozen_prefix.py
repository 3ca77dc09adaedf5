"""Teacher forcing through the adapted top layers with the frozen lower layers cached."""
from __future__ import annotations

import torch

from dense3d.models.captioner.decoder import tiny_llama, word_tokenizer
from dense3d.models.captioner.frozen_prefix import FrozenPrefixCache, caption_loss_top_layers
from dense3d.models.captioner.generate import caption_ids, span_token_weights, teacher_forcing_batch
from dense3d.models.captioner.llama_adapter import LlamaAdapter
from dense3d.models.losses.caption import caption_cross_entropy

from tests.models.test_captioner import oracle_scene, tiny_captioner

CAPS = ["a red car near the road.", "a blue truck far from the tree.", "a car.", "a green tree near the red car."]


def _setup(num_layers=4, adapted=2, seed=0):
    tok = word_tokenizer(["describe the object."] + CAPS)
    lm = tiny_llama(len(tok), hidden_size=64, num_layers=num_layers, seed=seed)
    for p in lm.parameters():
        p.requires_grad_(False)
    lm.eval()
    torch.manual_seed(seed)
    adapter = LlamaAdapter(64, 4, num_layers=adapted, prompt_len=3)
    with torch.no_grad():
        adapter.gates.normal_(0, 1.0)  # the adapter matters
    adapter.attach(lm)
    batch = teacher_forcing_batch(tok, ["describe the object."] * len(CAPS), CAPS, 16)
    visual = torch.randn(len(CAPS), 3, 64)
    return lm, adapter, batch, visual


def test_cached_top_layer_loss_equals_the_full_forward_loss_and_gradients():
    lm, adapter, batch, visual = _setup()
    assert batch["attention_mask"].sum(1).unique().numel() > 1  # rows of different lengths: padding present
    with adapter.conditioned_on(visual):
        full = caption_cross_entropy(lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                     batch["labels"])
    g_full = torch.autograd.grad(full, [adapter.prompts, adapter.gates])
    cache = FrozenPrefixCache()
    for _ in range(2):  # the second pass reads every row from the cache
        with adapter.conditioned_on(visual):
            top = caption_loss_top_layers(lm, cache, 2, batch)
        g_top = torch.autograd.grad(top, [adapter.prompts, adapter.gates])
        assert torch.allclose(top, full, atol=1e-5), (float(top), float(full))
        for a, b in zip(g_top, g_full):
            assert torch.allclose(a, b, atol=1e-5)
    assert (cache.misses, cache.hits, len(cache)) == (4, 4, 4)


def test_weighted_tokens_the_same_with_and_without_the_cache_and_by_hand():
    lm, adapter, _, visual = _setup()
    tok = word_tokenizer(["describe the object."] + CAPS)
    spans = [[(2, 9)], [], [(0, 1)], [(2, 7), (22, 25)]]  # "red car"; none; "a"; "green", "red"
    batch = teacher_forcing_batch(tok, ["describe the object."] * len(CAPS), CAPS, 16, spans=spans, span_weight=3.0)
    P = 4  # prompt tokens: describe the object .
    assert batch["weights"][0, P:P + 8].tolist() == [1, 3, 3, 1, 1, 1, 1, 1]  # a red car near the road . eos
    assert batch["weights"][3, P:P + 9].tolist() == [1, 3, 1, 1, 1, 3, 1, 1, 1]  # a green tree near the red car . eos
    assert batch["weights"][2, P:P + 4].tolist() == [3, 1, 1, 1] and batch["weights"][2, P + 4:].sum() == 0  # a car . eos, padding
    assert bool((batch["weights"][:, :P] == 0).all())  # the prompt has no loss
    with adapter.conditioned_on(visual):
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (N, T, V)
        full = caption_cross_entropy(logits, batch["labels"], batch["weights"])
        top = caption_loss_top_layers(lm, FrozenPrefixCache(), 2, batch)
    torch.testing.assert_close(top, full, atol=1e-5, rtol=1e-5)
    num = den = 0.0
    for n in range(len(CAPS)):
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["labels"][n, t] != -100:
                w = float(batch["weights"][n, t])
                num += w * float(torch.nn.functional.cross_entropy(logits[n, t - 1].detach(), batch["labels"][n, t]))
                den += w
    assert abs(float(full.detach()) - num / den) < 1e-5
    # all weights 1: the plain mean
    ones = teacher_forcing_batch(tok, ["describe the object."] * len(CAPS), CAPS, 16, spans=[[]] * 4)
    torch.testing.assert_close(caption_cross_entropy(logits, ones["labels"], ones["weights"]),
                               caption_cross_entropy(logits, ones["labels"]))


def test_span_weights_with_a_byte_level_tokenizer_whose_tokens_carry_their_space():
    # SmolLM2's tokenizer is byte-level BPE: " black" is one token, its offsets include the space
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = ["this is a brown chair. it is the chair closest to the black table."] * 20
    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="</s>")
    cap = text[0]
    start = cap.index("black")
    ids = caption_ids(tok, cap, 32)
    w = span_token_weights(tok, cap, [(start, start + len("black table"))], 3.0, 32)
    assert len(w) == len(ids) and w[-1] == 1.0  # eos
    assert tok.decode([i for i, x in zip(ids, w) if x == 3.0]) == " black table"
    assert tok.decode([i for i, x in zip(ids[:-1], w) if x == 1.0]).strip() == cap[:start].strip() + "."
    # cut to max_tokens like caption_ids: the weights stay aligned
    cut = span_token_weights(tok, cap, [(start, start + 5)], 3.0, 6)
    assert len(cut) == len(caption_ids(tok, cap, 6)) == 6


def test_cache_entries_do_not_depend_on_the_batch_they_were_computed_in():
    lm, adapter, batch, _ = _setup()
    together = FrozenPrefixCache().hidden(lm, batch["input_ids"], batch["attention_mask"], 2)  # (4, T, H)
    n = int(batch["attention_mask"][2].sum())
    alone = FrozenPrefixCache().hidden(lm, batch["input_ids"][2:3, :n], batch["attention_mask"][2:3, :n], 2)
    assert torch.allclose(together[2, :n], alone[0], atol=1e-5)
    assert torch.equal(together[2, n:], torch.zeros_like(together[2, n:]))  # padding stays zero


def test_cache_keeps_to_its_size_limit_and_drops_the_least_recently_used():
    lm, _, batch, _ = _setup()
    ids, att = batch["input_ids"], batch["attention_mask"]
    size = [int(att[i].sum()) * 64 * 4 for i in range(3)]  # bytes of rows 0..2 (float32)
    cache = FrozenPrefixCache(max_bytes=size[0] + max(size[1], size[2]) + 1)  # room for two, not three
    cache.hidden(lm, ids[:1], att[:1], 1)
    cache.hidden(lm, ids[1:2], att[1:2], 1)
    cache.hidden(lm, ids[:1], att[:1], 1)  # row 0 used again: row 1 is now the oldest
    cache.hidden(lm, ids[2:3], att[2:3], 1)
    assert len(cache) <= 2 and cache._bytes <= cache.max_bytes
    keys = list(cache._store)
    assert tuple(ids[0, : int(att[0].sum())].tolist()) in keys
    assert tuple(ids[1, : int(att[1].sum())].tolist()) not in keys
    cache.hidden(lm, ids[:1], att[:1], 2)  # another first layer: entries from layer 1 are not reused
    assert len(cache) == 1 and cache.misses == 4


def test_a_full_cache_never_drops_rows_of_the_batch_it_is_serving():
    """A batch of hits and misses, the cache full: storing the misses evicts older entries,
    and the batch's own hits must still come back (it raised KeyError at step 1,700 of a run
    on 2,820 scenes, when the 1 GB cache first filled up)."""
    lm, _, batch, _ = _setup()
    ids, att = batch["input_ids"], batch["attention_mask"]
    ref = FrozenPrefixCache().hidden(lm, ids, att, 2)  # (4, T, H), no eviction
    size = max(int(att[i].sum()) for i in range(4)) * 64 * 4
    cache = FrozenPrefixCache(max_bytes=2 * size)  # room for two rows
    cache.hidden(lm, ids[:2], att[:2], 2)  # rows 0, 1 stored
    out = cache.hidden(lm, ids, att, 2)  # rows 0, 1 hits, rows 2, 3 stored: 0 and 1 are evicted
    assert torch.allclose(out, ref, atol=1e-6)
    assert cache._bytes <= cache.max_bytes and (cache.hits, cache.misses) == (2, 4)
    twice = torch.cat([ids[2:3], ids[2:3]]), torch.cat([att[2:3], att[2:3]])  # one caption twice in a batch
    before = cache._bytes
    cache.hidden(lm, *twice, 2)
    assert cache._bytes == before  # row 2 was stored once: its bytes counted once


def test_captioner_loss_is_the_same_with_and_without_the_cache():
    regions, ctx, caps = oracle_scene()
    losses = []
    for cached in (True, False):
        model = tiny_captioner().eval()
        with torch.no_grad():
            model.adapter.gates.normal_(0, 1.0)
        if not cached:
            model.prefix_cache = None  # what cache_frozen_layers_mb=0 builds
        torch.manual_seed(0)
        losses.append(model(regions, ctx, caps)["loss_caption"])
    assert torch.allclose(losses[0], losses[1], atol=1e-5)


def test_cached_pass_builds_its_masks_without_transformers_deprecation_warnings():
    """transformers 5.x takes the mask's cache as ``cache`` and keeps ``past_key_values`` as a
    deprecated alias that warns on every call: every training step of the cached path warned."""
    import warnings

    lm, adapter, batch, visual = _setup()
    cache = FrozenPrefixCache()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for _ in range(2):  # the second pass reads the cached rows and builds the masks itself
            with adapter.conditioned_on(visual):
                caption_loss_top_layers(lm, cache, 2, batch)
    assert cache.hits == len(CAPS)
