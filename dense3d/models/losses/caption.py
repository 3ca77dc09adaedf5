"""Caption losses: teacher-forced cross-entropy and SCST with a CIDEr-D reward.

SCST (Rennie et al., 2017): sample a caption per region, score it with CIDEr-D against the
references, subtract the score of the test-time caption (the baseline) and raise the
log-likelihood of samples that beat it. CIDEr-D is pycocoevalcap's ``Cider``; its document
frequencies come from the references of the batch scored, or, as in Rennie et al.'s code (the
``coco-train`` n-gram file), from a corpus: :class:`CiderDocumentFrequency` of the training set's
references.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["caption_cross_entropy", "weighted_mean_cross_entropy", "sequence_log_probs", "cider_d", "scst_loss",
           "leave_one_out_baseline",
           "CiderDocumentFrequency"]


def caption_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens.

    Args:
        logits: (N, T, V) logits at every position; labels: (N, T) target ids at their own
            positions, -100 where no loss. Position t's logits predict token t + 1.
        weights: optional (N, T) weight of each labelled token (at the label's position); the
            loss is then the weighted mean.
    """
    V = logits.shape[-1]
    shift_logits = logits[:, :-1].reshape(-1, V).float()  # (N, T-1, V) -> (N*(T-1), V)
    shift_labels = labels[:, 1:].reshape(-1)  # (N, T-1) -> (N*(T-1),)
    if weights is None:
        return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
    return weighted_mean_cross_entropy(shift_logits, shift_labels, weights[:, 1:].reshape(-1))  # (N, T-1) -> (N*(T-1),)


def weighted_mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(M, V), (M,), (M,) -> sum(w * ce) / sum(w) over the labels that are not -100."""
    ce = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none")  # (M,), 0 where ignored
    w = weights.to(ce.dtype) * (labels != -100)
    return (w * ce).sum() / w.sum().clamp(min=1e-12)


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, T, V), (N, T) -> (N,) summed log-probabilities of the labelled tokens.

    ``logits`` may hold -inf (tokens a decoding constraint bans, e.g. the n-gram block); an
    unlabelled position may then pick one (its label stands in as id 0), so it is dropped with
    ``where``, not multiplied by 0 (-inf * 0 is nan)."""
    logp = F.log_softmax(logits[:, :-1].float(), -1)  # (N, T-1, V)
    tgt = labels[:, 1:]  # (N, T-1)
    keep = tgt != -100
    tok = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (N, T-1)
    return torch.where(keep, tok, torch.zeros_like(tok)).sum(-1)


@dataclass(frozen=True)
class CiderDocumentFrequency:
    """CIDEr-D's document frequencies from a fixed corpus: in how many documents (one region's
    set of references) each n-gram (n <= 4) occurs, and how many documents there are.

    pycocoevalcap counts them over the references it is handed, so a reward computed batch by
    batch weighs an n-gram by how rare it is among the batch's few regions; a corpus (the
    training references) weighs it as the evaluation over a whole split does."""

    counts: dict
    num_documents: int

    @classmethod
    def from_references(cls, references: list[list[str]]) -> "CiderDocumentFrequency":
        """One document per region: its references, lower-cased as :func:`cider_d` scores them."""
        from pycocoevalcap.cider.cider_scorer import cook_refs

        counts: dict = defaultdict(float)
        docs = [refs for refs in references if refs]
        for refs in docs:
            for ngram in {g for ref in cook_refs([r.lower() for r in refs]) for g in ref}:
                counts[ngram] += 1
        return cls(counts=dict(counts), num_documents=len(docs))


def _corpus_cider_scores(df: CiderDocumentFrequency, gts: dict, res: dict) -> list[float]:
    """pycocoevalcap's CIDEr-D with ``df``'s frequencies in place of the batch's own.

    Its ``CiderScorer.compute_score`` counts the frequencies from the references it holds and sets
    ``ref_len = log(number of documents)`` inside ``compute_cider``; the subclass keeps both at the
    corpus's values (``ref_len`` as a property whose setter the scorer's assignments cannot move)
    and calls ``compute_cider`` alone, so the n-gram vectors, clipping and length penalty stay the
    library's."""
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    class CorpusCiderScorer(CiderScorer):
        ref_len = property(lambda self: float(np.log(float(df.num_documents))), lambda self, value: None)

    scorer = CorpusCiderScorer(n=4, sigma=6.0)
    scorer.document_frequency = defaultdict(float, df.counts)
    for i in gts:
        scorer += (res[i][0], gts[i])
    return scorer.compute_cider()


def cider_d(hypotheses: list[str], references: list[list[str]],
            document_frequency: CiderDocumentFrequency | None = None) -> torch.Tensor:
    """(N,) CIDEr-D of each hypothesis against its references (pycocoevalcap); document
    frequencies from ``references`` themselves, or from ``document_frequency``'s corpus."""
    from pycocoevalcap.cider.cider import Cider

    if not hypotheses:
        return torch.zeros(0)
    gts = {i: [r.lower() for r in refs] or [""] for i, refs in enumerate(references)}
    res = {i: [h.lower() if h.strip() else "<empty>"] for i, h in enumerate(hypotheses)}
    if document_frequency is not None:
        scores = _corpus_cider_scores(document_frequency, gts, res)
    else:
        _, scores = Cider().compute_score(gts, res)
    return torch.as_tensor(np.asarray(scores), dtype=torch.float32)


def scst_loss(sample_log_probs: torch.Tensor, sample_reward: torch.Tensor, baseline_reward: torch.Tensor,
              lengths: torch.Tensor) -> torch.Tensor:
    """Self-critical policy gradient: ``-mean((r - b) * log p(sample) / length)``.

    Args:
        sample_log_probs: (N,) summed log-probabilities of the sampled captions (with grad).
        sample_reward, baseline_reward: (N,) CIDEr-D of the samples and of the test-time (baseline) captions.
        lengths: (N,) tokens per sample (normalises long captions).
    """
    adv = (sample_reward - baseline_reward).to(sample_log_probs)
    return -(adv * sample_log_probs / lengths.clamp(min=1).to(sample_log_probs)).mean()


def leave_one_out_baseline(rewards: torch.Tensor, samples: int) -> torch.Tensor:
    """Each sample's baseline: the mean reward of the other ``samples - 1`` samples of its region
    (Luo 2020, "A better variant of self-critical sequence training").

    Args:
        rewards: (N * samples,) rewards, region n's samples in rows ``n * samples`` to ``n * samples + samples - 1``.
        samples: samples per region (at least 2).
    Returns:
        (N * samples,) baselines.
    """
    if samples < 2 or rewards.numel() % samples:
        raise ValueError(f"leave_one_out_baseline: {rewards.numel()} rewards in groups of {samples} (need >= 2 a group)")
    per_region = rewards.reshape(-1, samples)  # (N, samples)
    return ((per_region.sum(1, keepdim=True) - per_region) / (samples - 1)).reshape(-1)  # (N * samples,)
