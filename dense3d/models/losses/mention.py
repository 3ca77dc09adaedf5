"""Which neighbour a caption names: the target of the Q-Former's pointers.

"This is a black chair. It is the chair closest to the black table." names the table; of the
chair's neighbours the pointer should pick the table. The label comes from the caption's words and
the regions' class labels alone, so it exists wherever captions and class names do (ScanRefer,
TOD3Cap, our synthetic sets):

* :func:`mention_words` — the words each class goes by in captions (``traffic_cone`` ->
  "traffic cone"; aliases such as ``garbagebin`` -> "trash can");
* :func:`mentioned_classes` — the classes a caption names, in the order it names them, leaving out
  the region's own class (the caption's subject);
* :func:`pointer_loss` — pointer p's cross-entropy towards the neighbours of the p-th named class.
  Two neighbours of that class (two tables) are both right: the loss is ``-log`` of their summed
  probability, so the pointer is not pushed towards one of two look-alikes it cannot tell apart.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

__all__ = ["mention_words", "mentioned_classes", "pointer_loss"]


def mention_words(class_names: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None) -> dict[int, list[str]]:
    """Label -> the words that name it in captions: the class name, with ``_`` as a space, and its
    aliases (lower case)."""
    aliases = aliases or {}
    out = {}
    for label, name in enumerate(class_names):
        words = {name.lower(), name.replace("_", " ").lower(), *(a.lower() for a in aliases.get(name, ()))}
        out[label] = sorted(words, key=len, reverse=True)
    return out


def mentioned_classes(caption: str, words: Mapping[int, Sequence[str]], own: int) -> list[int]:
    """The labels a caption names, in order (a class named twice counts twice), ``own`` left out.

    Whole words only, an optional plural "s" allowed ("chairs", not "armchair"); where two names
    overlap ("table", "side table") the longer one wins.
    """
    text = caption.lower()
    hits: list[tuple[int, int, int]] = []  # (start, -length, label)
    for label, ws in words.items():
        for w in ws:
            for m in re.finditer(rf"\b{re.escape(w)}s?\b", text):
                hits.append((m.start(), -(m.end() - m.start()), label))
    hits.sort()
    out, end = [], -1
    for start, neg_len, label in hits:
        if start < end:  # inside a longer name already taken
            continue
        end = start - neg_len
        if label != own:
            out.append(label)
    return out


def pointer_loss(logits: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor,
                 captions: Sequence[Sequence[str | None]], words: Mapping[int, Sequence[str]]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of the pointers against the classes the captions name.

    Args:
        logits: (B, R, k, P) pointer logits over each region's k neighbours (-inf: not real).
        index: (B, R, k) the neighbours' region indices; valid: (B, R, k) bool.
        labels: (B, R) class labels of the regions (-1: unknown).
        captions: B lists of R entries, the caption (str) or None (no loss for that region).
        words: :func:`mention_words` of the label set.
    Returns:
        (loss, number of (region, pointer) terms); the loss is 0 (with a graph) without terms. A
        pointer has a term when the caption names a p-th class and a real neighbour has it.
    """
    B, R, k, P = logits.shape
    nbr_labels = labels.gather(1, index.reshape(B, R * k)).reshape(B, R, k)  # (B, R*k) -> (B, R, k)
    terms = []
    for b in range(B):
        for i in range(R):
            cap = captions[b][i]
            if cap is None or not bool(valid[b, i].any()):
                continue
            named = mentioned_classes(cap, words, int(labels[b, i]))
            for p, cls in enumerate(named[:P]):
                right = valid[b, i] & (nbr_labels[b, i] == cls)  # (k,)
                if not bool(right.any()):
                    continue
                lp = logits[b, i, :, p].log_softmax(0)  # (k,), -inf where not real
                terms.append(-torch.logsumexp(lp[right], 0))
    if not terms:
        return logits.nan_to_num(0.0, posinf=0.0, neginf=0.0).sum() * 0.0, 0
    return torch.stack(terms).mean(), len(terms)
