"""A 16-bit frozen LLM (``local_llama_decoder(dtype=...)``) under float32 trainable parts."""
from __future__ import annotations

import pytest
import torch

from dense3d.errors import ConfigError
from dense3d.models.captioner.decoder import local_llama_decoder, tiny_llama, word_tokenizer
from dense3d.models.captioner.frozen_prefix import FrozenPrefixCache, caption_loss_top_layers
from dense3d.models.captioner.generate import generate_captions, teacher_forcing_batch
from dense3d.models.captioner.llama_adapter import LlamaAdapter

WORDS = ["describe the object. a red car parked near the tree", "blue truck sound horn"]
PROMPT = "describe the object."


@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory):
    tok = word_tokenizer(WORDS)
    folder = tmp_path_factory.mktemp("llama_bf16")
    tiny_llama(len(tok), num_layers=3).to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_dtype_must_be_one_of_three_strings():
    with pytest.raises(ConfigError) as info:
        local_llama_decoder("/nowhere", dtype="fp16")
    with pytest.raises(ConfigError):
        local_llama_decoder("/nowhere", dtype=["bfloat16"])
    assert "\n" not in str(info.value) and "dtype" in str(info.value)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16bit_frozen_llm_with_float32_adapter(bf16_folder, dtype):
    dec = local_llama_decoder(str(bf16_folder), dtype=dtype)
    model, tok = dec.model, dec.tokenizer
    want = getattr(torch, dtype)
    assert all(p.dtype == want for p in model.parameters())
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = LlamaAdapter(64, 4, num_layers=2, prompt_len=5)
    assert all(p.dtype == torch.float32 for p in adapter.parameters())
    adapter.attach(model)
    visual = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1)) * 3  # float32, as the Q-Former gives
    ids = tok([PROMPT + " a red car"] * 3, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ref = model(**ids).logits
        with adapter.conditioned_on(visual):  # (a) zero gates: the frozen model exactly
            assert torch.equal(model(**ids).logits, ref)
        adapter.gates.fill_(0.5)
    # (b) one training step through the frozen prefix cache
    batch = teacher_forcing_batch(tok, [PROMPT] * 3, ["a red car", "blue truck near the tree", "horn"], 8)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    with adapter.conditioned_on(visual):
        loss = caption_loss_top_layers(model, FrozenPrefixCache(), 2, batch)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    for name in ("prompts", "gates"):
        grad = getattr(adapter, name).grad
        assert grad is not None and grad.dtype == torch.float32
        assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0, name
    opt.step()
    assert all(p.dtype == torch.float32 for p in adapter.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in model.state_dict().items())
    # (c) batched generation equals one at a time
    batched, _ = generate_captions(model, adapter, tok, visual, PROMPT, 6)
    single, _ = generate_captions(model, adapter, tok, visual, PROMPT, 6, batch_size=1)
    assert batched == single


@pytest.mark.parametrize("dtype,cache_mb", [("bfloat16", 0), ("float16", 0), ("bfloat16", 8)])
def test_region_captioner_trains_and_generates_on_a_16bit_llm(tmp_path, dtype, cache_mb):
    """The whole captioner (BiCA, Q-Former, adapter in float32) over a 16-bit frozen LLM."""
    from dense3d.models.captioner.qformer import RelationQFormer
    from dense3d.models.captioner.region_captioner import RegionCaptioner
    from dense3d.models.context.bica import BiCADecoder
    from tests.models.test_captioner import CLASSES, D, H, WORDS as CAP_WORDS, oracle_scene

    tok = word_tokenizer(CAP_WORDS)
    tiny_llama(len(tok), hidden_size=H).to(torch.bfloat16).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = RegionCaptioner(
        decoder=local_llama_decoder(str(tmp_path), dtype=dtype),
        adapter=LlamaAdapter(H, 4, num_layers=2, prompt_len=4),
        qformer=RelationQFormer(64, 4, 1, num_queries=4, num_neighbours=3, region_dim=64, out_dim=H),
        bica=BiCADecoder(64, 4, 1, region_dim=D, context_dim=D),
        class_names={"box": CLASSES, "event": ["horn", "siren"]}, max_new_tokens=8, llm_autocast=False,
        cache_frozen_layers_mb=cache_mb,
    )
    regions, ctx, caps = oracle_scene()
    lm = model._lm()
    frozen = {k: v.clone() for k, v in lm.state_dict().items()}
    with torch.no_grad():
        model.adapter.gates.fill_(0.3)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    out = model(regions, ctx, caps)
    assert torch.isfinite(out["loss_caption"]) and out["loss_caption"].dtype == torch.float32
    out["loss_caption"].backward()
    grads = [p.grad for p in (model.adapter.gates, model.adapter.prompts, model.qformer.queries)]
    assert all(g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0 for g in grads)
    opt.step()
    opt.zero_grad()
    refs = [[[c, c.replace("a ", "one ")] for c in row] for row in caps]
    scst = model.scst_loss(regions, ctx, refs)
    assert torch.isfinite(scst["loss_scst"])
    scst["loss_scst"].backward()
    assert model.adapter.prompts.grad is not None and bool(torch.isfinite(model.adapter.prompts.grad).all())
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    assert all(p.dtype == getattr(torch, dtype) for p in lm.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in lm.state_dict().items())
    model.eval()
    batched = model.generate(regions, ctx)
    single = model.generate(regions, ctx, batch_size=1)
    assert [[c.text for c in s] for s in batched] == [[c.text for c in s] for s in single]
