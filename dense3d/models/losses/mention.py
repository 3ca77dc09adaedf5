"""Which neighbour a caption names: the labels of the Q-Former's target order.

"This is a black chair. It is the chair closest to the black table." names the table; of the
chair's neighbours the Q-Former's target head should pick the table. The label comes from the
caption's words and the regions' class labels alone, so it exists wherever captions and class names
do (ScanRefer, TOD3Cap, our synthetic sets):

* :func:`mention_words` — the words each class goes by in captions (``traffic_cone`` ->
  "traffic cone"; aliases such as ``garbagebin`` -> "trash can");
* :func:`mentioned_classes` — the classes a caption names, in the order it names them, leaving out
  the region's own class (the caption's subject);
* :func:`target_word_spans` — where in the caption those names stand, with the word before each
  (the target's colour), for weighting the caption loss on them;
* :func:`target_labels` — for each region, which of its neighbours (nearest first) the caption
  names first, second, ...: the nearest neighbour of the named class not taken already, "none"
  where the caption names no further class, unknown where no neighbour has the named class;
* :func:`named_relation`, :func:`relation_labels` — which relation phrase ("between", "left of",
  ...) a caption states towards another region: the labels of the captioner's relation head;
* :func:`named_phrase`, :func:`phrase_labels` — which of a few word groups a caption states first
  (the motion words "parked", "moving", ...): the labels of the captioner's motion hint.

A caption whose target has the region's own class ("the chair next to the brown chair") is read
as naming no target: the subject and the target cannot be told apart by class alone.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

__all__ = ["mention_words", "mentioned_classes", "target_word_spans", "target_labels", "named_relation",
           "relation_labels", "named_phrase", "phrase_labels", "IGNORE", "NOT_A_REGION"]

IGNORE = -100  # no label (torch.nn.functional.cross_entropy's default ignore_index)
# words that make a class name something other than a region: "behind the *ego* car" (TOD3Cap, our
# outdoor set) is the sensor platform, and the phrase before it a direction, not a relation
NOT_A_REGION = ("ego",)


def mention_words(class_names: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None) -> dict[int, list[str]]:
    """Label -> the words that name it in captions: the class name, with ``_`` as a space, and its
    aliases (lower case)."""
    aliases = aliases or {}
    out = {}
    for label, name in enumerate(class_names):
        words = {name.lower(), name.replace("_", " ").lower(), *(a.lower() for a in aliases.get(name, ()))}
        out[label] = sorted(words, key=len, reverse=True)
    return out


def _class_mentions(caption: str, words: Mapping[int, Sequence[str]]) -> list[tuple[int, int, int]]:
    """(start, end, label) of every class name in ``caption``, in order: whole words only, an
    optional plural "s" allowed ("chairs", not "armchair"); where two names overlap ("table",
    "side table") the longer one wins."""
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
        out.append((start, end, label))
    return out


def mentioned_classes(caption: str, words: Mapping[int, Sequence[str]], own: int) -> list[int]:
    """The labels a caption names, in order (a class named twice counts twice), ``own`` left out
    (matching as in :func:`_class_mentions`)."""
    return [label for _, _, label in _class_mentions(caption, words) if label != own]


def target_word_spans(caption: str, words: Mapping[int, Sequence[str]], own: int) -> list[tuple[int, int]]:
    """Character spans of the words that name the caption's targets: each class name other than
    ``own`` together with the word before it (its colour, size or article: "the *black table*"),
    unless punctuation stands between them ("a chair. *Tables* are near"); names matched as in
    :func:`_class_mentions`."""
    out = []
    for start, end, label in _class_mentions(caption, words):
        if label == own:
            continue
        before = re.search(r"(\w+)\s+$", caption[:start])  # the previous word, if only spaces lie between
        out.append((before.start(1) if before else start, end))
    return out


def target_labels(index: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor,
                  captions: Sequence[Sequence[str | None]], words: Mapping[int, Sequence[str]],
                  num_targets: int) -> torch.Tensor:
    """Which neighbour each region's caption names p-th, for p < ``num_targets``.

    Args:
        index: (B, R, k) the neighbours' region indices, nearest first; valid: (B, R, k) bool.
        labels: (B, R) class labels of the regions (-1: unknown).
        captions: B lists of R entries, the caption (str) or None (no label for that region).
        words: :func:`mention_words` of the label set.
        num_targets: P.
    Returns:
        (B, R, P) long on ``index``'s device: the neighbour's slot j < k (the nearest real
        neighbour of the p-th named class that no earlier p took), k where the caption names
        fewer than p + 1 classes ("no p-th target"), :data:`IGNORE` where no real neighbour has
        the named class or the region has no caption.
    """
    B, R, k = index.shape
    nbr_labels = labels.gather(1, index.reshape(B, R * k)).reshape(B, R, k).tolist()  # (B, R*k) -> (B, R, k)
    ok, own = valid.tolist(), labels.tolist()
    out = [[[IGNORE] * num_targets for _ in range(R)] for _ in range(B)]
    for b in range(B):
        for i in range(R):
            cap = captions[b][i]
            if cap is None:
                continue
            named = mentioned_classes(cap, words, int(own[b][i]))
            taken: set[int] = set()
            for p in range(num_targets):
                if p >= len(named):
                    out[b][i][p] = k
                    continue
                hits = [j for j in range(k) if ok[b][i][j] and nbr_labels[b][i][j] == named[p] and j not in taken]
                if hits:
                    out[b][i][p] = hits[0]
                    taken.add(hits[0])
    return torch.tensor(out, dtype=torch.long, device=index.device).reshape(B, R, num_targets)


def named_relation(caption: str, relations: Sequence[Sequence[str]], words: Mapping[int, Sequence[str]]) -> int:
    """The relation ``caption`` states towards another region, as an index into ``relations`` (each
    a list of the phrases that state it: ``["in front of", "ahead of"]``). It is the earliest phrase
    followed by an article ("the", "a", "an"), at most two words (colour, size) and a class name
    (matched as in :func:`_class_mentions`): "right of the orange traffic cone", "between the red
    car and ...". ``len(relations)`` where no phrase is followed so; a class name after a word of
    :data:`NOT_A_REGION` ("behind the ego car") is not a region."""
    text = caption.lower()
    index = {p.lower(): n for n, group in enumerate(relations) for p in group}
    alts = "|".join(re.escape(p) for p in sorted(index, key=len, reverse=True))  # longest first: "to the left of" before "left of"
    lead = re.compile(rf"\b({alts})\s+(?:the|a|an)\s+((?:[\w-]+\s+){{0,2}})$")
    best = (len(text) + 1, len(relations))  # (where the phrase starts, its relation)
    for start, _, _ in _class_mentions(text, words):
        m = lead.search(text[:start])
        if m is None or any(w in NOT_A_REGION for w in m.group(2).split()):
            continue
        best = min(best, (m.start(1), index[m.group(1)]))
    return best[1]


def relation_labels(captions: Sequence[Sequence[str | None]], relations: Sequence[Sequence[str]],
                    words: Mapping[int, Sequence[str]]) -> torch.Tensor:
    """(B, R) long: per region, :func:`named_relation` of its caption (``len(relations)``: none
    stated), :data:`IGNORE` where it has no caption. ``captions``: B lists of R entries."""
    R = len(captions[0]) if len(captions) else 0  # (rows of equal length: RegionCaptioner checks them)
    return torch.tensor([[IGNORE if c is None else named_relation(c, relations, words) for c in row] for row in captions],
                        dtype=torch.long).reshape(len(captions), R)


def named_phrase(caption: str, groups: Sequence[Sequence[str]]) -> int:
    """Index of the group (each a list of phrases: ``["moving", "driving"]``) whose phrase stands
    earliest in ``caption`` as whole words, case aside; :data:`IGNORE` where none does (a caption
    that leaves the fact unsaid teaches nothing about it)."""
    text = caption.lower()
    index = {p.lower(): n for n, group in enumerate(groups) for p in group}
    if not index:
        return IGNORE
    alts = "|".join(re.escape(p) for p in sorted(index, key=len, reverse=True))  # longest first
    m = re.search(rf"\b({alts})\b", text)
    return IGNORE if m is None else index[m.group(1)]


def phrase_labels(captions: Sequence[Sequence[str | None]], groups: Sequence[Sequence[str]]) -> torch.Tensor:
    """(B, R) long: per region, :func:`named_phrase` of its caption; :data:`IGNORE` where it has no
    caption or states none of the phrases. ``captions``: B lists of R entries."""
    R = len(captions[0]) if len(captions) else 0  # (rows of equal length: RegionCaptioner checks them)
    return torch.tensor([[IGNORE if c is None else named_phrase(c, groups) for c in row] for row in captions],
                        dtype=torch.long).reshape(len(captions), R)
