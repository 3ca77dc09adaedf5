"""Tokenising captions for teacher forcing, and generating them with transformers' ``generate``.

Sequence layout (training and generation alike)::

    [bos, if the tokenizer adds one] [prompt tokens ("Describe the object.")] [caption tokens] [eos]

No chat template; a BOS first where the tokenizer puts one before a text (Llama 2 / 3; not
SmolLM2's, :func:`prompt_ids`); the prompt and caption ids are the tokenizer's ids of the whole
text ``prompt + " " + caption`` (:func:`_caption_encoding`). The same ids are built here for
both, so what the adapter learns in training is exactly what generation conditions on. All regions of one kind share
one prompt, so a generation batch needs no padding; transformers' ``generate`` runs greedy
search (default, deterministic) or beam search with its KV cache, while
``LlamaAdapter.conditioned_on`` supplies each row's visual tokens at every step.
"""
from __future__ import annotations

import contextlib
import math

import torch

from dense3d.errors import ConfigError
from dense3d.models.checks import check_int

__all__ = ["prompt_ids", "caption_ids", "span_token_weights", "teacher_forcing_batch", "generate_captions",
           "candidates_by_loop", "check_decoding", "decoding_processors", "processed_logits", "phrase_first_tokens",
           "phrase_token_sequences", "ClassifierFusion", "consensus_pick"]

IGNORE = -100  # label of tokens without loss (prompt, padding)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of a text prompt, after the special tokens the tokenizer puts before a text (the BOS
    of Llama 2 / Llama 3 tokenizers; none for SmolLM2's or
    :func:`~dense3d.models.captioner.decoder.word_tokenizer`'s), never those it puts after one (an
    eos would end the caption before it starts). A LLaMA trained with a BOS first reads a text
    without one badly (the first token is where its attention rests)."""
    plain = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt)["input_ids"]
    for k in range(len(full) - len(plain) + 1):  # where the plain ids start among the special ones
        if full[k : k + len(plain)] == plain:
            return full[:k] + plain
    return plain


def _caption_encoding(tokenizer, caption: str, prompt: str | None, offsets: bool = False):
    """Ids of ``caption.strip()`` as the tokenizer splits it where it follows ``prompt`` and a space
    in one text, and with ``offsets`` each id's character span in ``caption.strip()``.

    The caption's ids are those of ``prompt + " " + caption`` after the prompt's own ids, so the
    prompt and caption ids together are the tokenization of the whole text, as the LLM read such
    text in pretraining. Tokenizing ``" " + caption`` alone is the same for tokenizers that mark a
    word's space on the word (GPT-2-style byte-level BPE: SmolLM2, Llama 3; the word tokenizer),
    but not for SentencePiece ones that put a "▁" before every text (Llama 2, TinyLlama, Mistral
    read verbatim from their ``tokenizer.json``, and any slow ``LlamaTokenizer``): " a red car"
    is "▁ ▁a ▁red ▁car" there, a lone "▁" no text ever has between a prompt and its next word.
    Where the prompt's ids are not a prefix of the whole text's (a merge across the seam), and
    with ``prompt=None``, the ids of ``" " + caption`` are used."""
    caption = caption.strip()
    if prompt is not None:
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        enc = tokenizer(prompt + " " + caption, add_special_tokens=False, return_offsets_mapping=offsets)
        if enc["input_ids"][: len(head)] == head:
            shift = len(prompt) + 1  # offsets in prompt + " " + caption -> in caption
            spans = [(a - shift, b - shift) for a, b in enc["offset_mapping"][len(head):]] if offsets else None
            return enc["input_ids"][len(head):], spans
    enc = tokenizer(" " + caption, add_special_tokens=False, return_offsets_mapping=offsets)
    spans = [(a - 1, b - 1) for a, b in enc["offset_mapping"]] if offsets else None  # shift by the space
    return enc["input_ids"], spans


def caption_ids(tokenizer, caption: str, max_tokens: int, prompt: str | None = None) -> list[int]:
    """Token ids of ``caption`` as it follows ``prompt`` (:func:`_caption_encoding`; None: the ids of
    ``" " + caption``), cut to ``max_tokens - 1``, then eos."""
    ids, _ = _caption_encoding(tokenizer, caption, prompt)
    return ids[: max_tokens - 1] + [tokenizer.eos_token_id]


def span_token_weights(tokenizer, caption: str, spans, weight: float, max_tokens: int,
                       prompt: str | None = None) -> list[float]:
    """Per caption token (as :func:`caption_ids` cuts them, eos last): ``weight`` for the tokens
    that overlap a character span of ``caption.strip()``, 1 for the rest (eos included)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("RegionCaptioner", "target_word_weight", "1.0 with a tokenizer that has no character offsets",
                          got=f"{weight} with {type(tokenizer).__name__}")
    _, offsets = _caption_encoding(tokenizer, caption, prompt, offsets=True)
    out = []
    for a, b in offsets[: max_tokens - 1]:  # character spans in caption.strip()
        hit = any(a < e and s < b for s, e in spans)
        out.append(weight if hit else 1.0)
    return out + [1.0]  # eos


def teacher_forcing_batch(tokenizer, prompts: list[str], captions: list[str], max_caption_tokens: int,
                          device=None, spans=None, span_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` (N, T) and ``labels`` (N, T), where
    labels are the caption tokens (and eos) at their own positions, ``-100`` elsewhere.

    With ``spans`` (per caption, character spans of ``caption.strip()``) also ``weights`` (N, T):
    each labelled token's weight in the caption loss, ``span_weight`` where the token overlaps a
    span, 1 elsewhere, 0 where there is no label."""
    rows, labels, weights = [], [], []
    for n, (p, c) in enumerate(zip(prompts, captions)):
        pi, ci = prompt_ids(tokenizer, p), caption_ids(tokenizer, c, max_caption_tokens, prompt=p)
        rows.append(pi + ci)
        labels.append([IGNORE] * len(pi) + ci)
        if spans is not None:
            weights.append([0.0] * len(pi) + span_token_weights(tokenizer, c, spans[n], span_weight, max_caption_tokens,
                                                                prompt=p))
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    lab = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    att = torch.zeros(len(rows), T, dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, : len(r)], lab[i, : len(l)], att[i, : len(r)] = torch.tensor(r), torch.tensor(l), 1
    out = {"input_ids": ids.to(device), "attention_mask": att.to(device), "labels": lab.to(device)}
    if spans is not None:
        w = torch.zeros(len(rows), T)
        for i, row in enumerate(weights):
            w[i, : len(row)] = torch.tensor(row)
        out["weights"] = w.to(device)
    return out


def check_decoding(source: str, max_new_tokens: int = 32, num_beams: int = 1, no_repeat_ngram_size: int = 0,
                   repetition_penalty: float = 1.0, batch_size: int | None = None, temperature: float = 1.0) -> None:
    """One-line ``ConfigError``s, naming ``source``, for decoding options transformers' ``generate``
    would reject deep inside (or, for ``batch_size``, silently decode nothing with)."""
    check_int(source, "max_new_tokens", max_new_tokens)
    check_int(source, "num_beams", num_beams)
    check_int(source, "no_repeat_ngram_size", no_repeat_ngram_size, 0)
    for name, value in (("repetition_penalty", repetition_penalty), ("temperature", temperature)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ConfigError(source, name, "a finite number > 0" + (" (1.0: off)" if name == "repetition_penalty" else ""),
                              got=value)
    if batch_size is not None:  # None: all regions at once
        check_int(source, "batch_size", batch_size)


def decoding_processors(no_repeat_ngram_size: int = 0, repetition_penalty: float = 1.0):
    """The logits processors transformers' ``generate`` builds for these settings, in its order
    (``GenerationMixin._get_logits_processor``: repetition penalty, then the n-gram block); empty
    when both are off. What :func:`generate_captions` decodes and samples with, as a
    ``LogitsProcessorList`` a scoring pass can apply itself (:func:`processed_logits`)."""
    from transformers.generation.logits_process import (LogitsProcessorList, NoRepeatNGramLogitsProcessor,
                                                        RepetitionPenaltyLogitsProcessor)

    processors = LogitsProcessorList()
    if repetition_penalty != 1.0:
        # generate passes prompt_ignore_length = the left padding of the attention mask, 0 for the
        # unpadded prompts of generate_captions: the prompt's tokens are penalised too, as here.
        processors.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty)))
    if no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    return processors


def processed_logits(logits: torch.Tensor, input_ids: torch.Tensor, processors, start: int) -> torch.Tensor:
    """(N, T, V) teacher-forced logits, with ``processors`` applied at every position that predicts
    a token at or after ``start`` (the generated part), each given the prefix before that token.

    ``generate_captions`` calls ``generate`` with the prompt as ``input_ids``, so at each step the
    processors see the prompt and the tokens generated so far: the prefix here is the same,
    ``input_ids[:, : t + 1]`` for the logits at position t (which predict token t + 1). Positions
    that predict prompt tokens stay raw (nothing scores them). The processors only mask (-inf) and
    scale logits, out of place, so gradients flow through the logits of the tokens they keep.
    Empty ``processors``: ``logits`` itself.
    """
    if len(processors) == 0:
        return logits
    T = logits.shape[1]
    steps = [logits[:, : start - 1]]  # (N, start - 1, V): predict prompt tokens
    for t in range(start - 1, T - 1):
        steps.append(processors(input_ids[:, : t + 1], logits[:, t]).unsqueeze(1))  # (N, V) -> (N, 1, V)
    steps.append(logits[:, T - 1 :])  # (N, 1, V): predicts past the sequence, never scored
    return torch.cat(steps, dim=1)  # (N, T, V)


def _phrase_ids(tokenizer, groups: list[list[str]], prompt: str, source: str, first: bool) -> list[list]:
    """The loop of :func:`phrase_first_tokens` (``first``: each phrase's first token id, which must
    be known and of one group) and :func:`phrase_token_sequences` (each phrase's ids as a tuple,
    every one known, each tuple of one group), without repeats within a group."""
    out, owner = [], {}
    for g, phrases in enumerate(groups):
        ids = []
        for phrase in phrases:
            enc = tuple(_caption_encoding(tokenizer, phrase, prompt)[0])
            if not enc or tokenizer.unk_token_id in (enc[:1] if first else enc):
                raise ConfigError(source, "phrases", "phrases the LLM's tokenizer has tokens for",
                                  got=f"{phrase!r} {'starts with' if first else 'has'} the unknown token {tokenizer.unk_token!r}"
                                  if enc else repr(phrase))
            key = enc[0] if first else enc
            if owner.setdefault(key, g) != g:
                if first:
                    raise ConfigError(source, "phrases", "groups whose phrases start with tokens of their own",
                                      got=f"{phrase!r} starts with the token {tokenizer.decode([key])!r} of group {owner[key]}")
                raise ConfigError(source, "phrases", "phrases of one group each", got=f"{phrase!r} is also in group {owner[key]}")
            if key not in ids:
                ids.append(key)
        out.append(ids)
    return out


def phrase_first_tokens(tokenizer, groups: list[list[str]], prompt: str, source: str = "phrase fusion") -> list[list[int]]:
    """Per group of phrases, the ids of the first token each phrase starts with where it follows a
    space in a caption (:func:`_caption_encoding` after ``prompt``), without repeats. A ConfigError,
    naming ``source``, where two groups start with one token (fusing it would move one group's
    mass to the other) or a phrase with the unknown token (a word-level vocabulary without it).

    Only that first token is fused: every other word that starts with it has its mass moved too
    (a phrase "at rest" would take every " at"), and a capitalised phrase at a caption's start
    ("Parked ...") is another token, not fused. Single-token words are safe (SmolLM2's motion
    words are one token each after a space)."""
    return _phrase_ids(tokenizer, groups, prompt, source, first=True)


def phrase_token_sequences(tokenizer, groups: list[list[str]], prompt: str,
                           source: str = "phrase fusion") -> list[list[tuple[int, ...]]]:
    """Per group of phrases, each phrase's token ids where it follows a space in a caption
    (:func:`_caption_encoding` after ``prompt``), without repeats: what :class:`ClassifierFusion`
    follows token by token. Groups may share tokens ("to the left of" / "to the right of"): the
    fusion then chooses at the first token that tells them apart. A ConfigError, naming ``source``,
    for a phrase with the unknown token or a phrase of two groups."""
    return _phrase_ids(tokenizer, groups, prompt, source, first=False)


class ClassifierFusion:
    """A logits processor for ``generate`` that lets a classifier choose among phrase groups where
    the LLM states one: the LLM decides *whether* a group's phrase comes next, the fused answer
    decides *which*.

    At every step, the *candidates* are the tokens that start a group's phrase, or continue one the
    sequence has begun (a phrase of several tokens is followed token by token). Let P_t be the
    LLM's probability of candidate t, n_t the number of groups it leads on to, P_g = sum of P_t / n_t
    over the candidates of group g, and M the candidates' total. The groups' share becomes
    r_g ~ (P_g / M)^(1 - w) q_g^w over the groups a candidate leads to (a product of experts;
    ``weight`` w = 1: the classifier's answer q alone, renormalised over them; 0: unchanged), and
    each candidate gets p'(t) = M sum over its groups of r_g (P_t / n_t) / P_g (a group the LLM
    makes impossible, P_g = 0, stays so). The mass M stays and every other token keeps its
    probability, so sampling states a group's phrase exactly as often as the LLM would, and a
    caption that states none is not pushed to state one; greedy search takes the fused best where
    it still beats every other token. A token shared by groups ("to" of "to the left of" and "to
    the right of") carries the classifier's mass of all of them; the choice falls at the token
    that tells them apart, where only the groups still reachable compete.

    Shallow fusion (an external model's scores added to the decoder's at each step, as in speech
    recognition), restricted to the tokens the classifier knows; transformers' processors only
    mask or bias tokens, none renormalises a group.

    Where a phrase's first token also begins other text ("in" of "in front of" and of "in the
    distance"), fusing it would move that text's mass too: leave such phrases out of the groups,
    or limit where phrases may begin with ``after``.

    Args:
        token_groups: per group (class of the classifier), its phrases' token ids
            (:func:`phrase_token_sequences`), or their first tokens alone as ints
            (:func:`phrase_first_tokens`).
        probs: (N, G) the classifier's probabilities, one row per region of the batch.
        weight: w above, in [0, 1].
        after: token ids after which a phrase may begin (and at the caption's start); None: anywhere.
        prompt_length: tokens before the caption in the ``input_ids`` the processor is given
            (``generate_captions`` sets it).
        gate: "mass" (default): every step is fused as above. "top": only the steps where the LLM's
            most likely token is a candidate, so greedy search never states a phrase where it would
            not without the classifier (it may state none where it would: a spread answer can
            leave every fused candidate below the best other token). Under "mass" greedy search
            may state one where the LLM spreads its mass over several groups' first tokens and the
            fused group's share of it outweighs the LLM's top token (at a caption's start that
            changes the sentence's template).
    """

    def __init__(self, token_groups, probs: torch.Tensor, weight: float, after=None, prompt_length: int = 0,
                 gate: str = "mass"):
        if len(token_groups) != probs.shape[-1]:
            raise ConfigError("ClassifierFusion", "probs", f"one column per group ({len(token_groups)})",
                              got=tuple(probs.shape))
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise ConfigError("ClassifierFusion", "weight", "a number in [0, 1]", got=weight)
        self.token_groups = [[(s,) if isinstance(s, int) else tuple(s) for s in seqs] for seqs in token_groups]
        if gate not in ("mass", "top"):
            raise ConfigError("ClassifierFusion", "gate", '"mass" or "top"', got=gate)
        self.probs, self.weight, self.prompt_length, self.gate = probs.float(), float(weight), int(prompt_length), gate
        self.after = None if after is None else frozenset(int(t) for t in after)
        self.phrases = [(g, s) for g, seqs in enumerate(self.token_groups) for s in seqs]  # (group, ids)
        universe = sorted({t for _, s in self.phrases for t in s})
        self.tokens = torch.tensor(universe, dtype=torch.long)  # (U,) every token of every phrase
        column = {t: u for u, t in enumerate(universe)}
        G, P, J = len(self.token_groups), len(self.phrases), max((len(s) for _, s in self.phrases), default=1)
        # the phrases as tensors, so that the candidates are found on the scores' device without
        # reading the sequences back to the host at every generated token
        self._seq = torch.full((P, J), -1, dtype=torch.long)  # (P, J) each phrase's ids, -1 past its end
        self._len = torch.tensor([len(s) for _, s in self.phrases])  # (P,)
        self._next = torch.zeros(P, J, len(universe), G)  # (P, J, U, G) 1: token j of phrase p is u, of group g
        for p, (g, seq) in enumerate(self.phrases):
            self._seq[p, : len(seq)] = torch.tensor(seq)
            for j, t in enumerate(seq):
                self._next[p, j, column[t], g] = 1.0
        self._after = None if self.after is None else torch.tensor(sorted(self.after), dtype=torch.long)  # (a,)
        self._device_copies: dict[torch.device, dict[str, torch.Tensor]] = {}
        # without multi-token phrases or ``after``, the candidates are the same first tokens at every step
        self._static = None
        if self.after is None and J == 1:
            self._static = self._next[:, 0].sum(0).clamp_max(1.0)  # (P, U, G) -> (U, G) every phrase's first token

    def rows(self, start: int, stop: int, num_beams: int = 1, prompt_length: int | None = None) -> "ClassifierFusion":
        """The processor for regions ``start:stop`` of the batch, each repeated ``num_beams`` times
        (``generate`` expands a row into its beams next to each other)."""
        return ClassifierFusion(self.token_groups, self.probs[start:stop].repeat_interleave(num_beams, 0), self.weight,
                                self.after, self.prompt_length if prompt_length is None else prompt_length, self.gate)

    def _membership(self, generated: torch.Tensor) -> torch.Tensor:
        """(N, U, G) 1 where token u, next, starts or continues a phrase of group g in that row of
        ``generated`` (N, L), the caption's tokens so far. In a row that is inside a phrase (j >= 1
        of its tokens written), only continuations are candidates: a new phrase does not begin in
        the middle of one. Tensor operations on ``generated``'s device only: nothing is read back to
        the host."""
        N, L = generated.shape
        P, J = self._seq.shape
        on = self._on(generated.device)
        seq, length = on["seq"], on["len"]
        ok = torch.zeros(N, P, J, dtype=torch.bool, device=generated.device)  # (N, P, J) phrase p has its first j tokens just written
        for j in range(min(J, L + 1)):
            m = (length > j).unsqueeze(0).expand(N, P)  # (N, P) the phrase has a token j to write next
            if j:
                m = m & (generated[:, L - j:].unsqueeze(1) == seq[:, :j].unsqueeze(0)).all(-1)  # (N, 1, j) vs (1, P, j) -> (N, P)
            if self._after is not None and L - j > 0:  # the phrase began after one of these, or at the start
                m = m & (generated[:, L - j - 1].unsqueeze(-1) == on["after"]).any(-1, keepdim=True)  # (N, 1)
            ok[:, :, j] = m
        inside = ok[:, :, 1:].flatten(1).any(-1)  # (N,) rows in the middle of a phrase
        ok[:, :, 0] &= ~inside.unsqueeze(1)  # there, no new phrase begins
        return torch.einsum("npj,pjug->nug", ok.float(), on["next"]).clamp_max(1.0)  # (N, U, G)

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The processor's fixed tensors on ``device``, copied once: a copy from the host at every
        generated token would make the host wait for the queued LLM step on a GPU."""
        if device not in self._device_copies:
            fixed = {"seq": self._seq, "len": self._len, "next": self._next, "tokens": self.tokens, "probs": self.probs}
            if self._after is not None:
                fixed["after"] = self._after
            if self._static is not None:
                fixed["static"] = self._static
            self._device_copies[device] = {k: v.to(device) for k, v in fixed.items()}
        return self._device_copies[device]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(N, V) scores -> (N, V), out of place."""
        if scores.shape[0] != self.probs.shape[0]:
            raise ConfigError("ClassifierFusion", "probs", f"one row per generated sequence ({scores.shape[0]})",
                              got=tuple(self.probs.shape))
        N, G = self.probs.shape
        if len(self.tokens) == 0:  # no group has a phrase: nothing to fuse
            return scores
        on = self._on(scores.device)
        if self._static is not None:
            A = on["static"].expand(N, -1, -1)  # (U, G) -> (N, U, G)
        else:
            A = self._membership(input_ids[:, self.prompt_length:].to(scores.device))  # (N, U, G)
        tokens, q = on["tokens"], on["probs"]  # (U,), (N, G)
        tiny = torch.finfo(torch.float32).tiny
        log_z = scores.float().logsumexp(-1, keepdim=True)  # (N, 1)
        n_t = A.sum(-1)  # (N, U) groups each candidate leads to; 0: not a candidate now
        p_tok = (scores.float()[:, tokens] - log_z).exp() * (n_t > 0)  # (N, U) the LLM's probabilities of the candidates
        part = A * (p_tok / n_t.clamp_min(1)).unsqueeze(-1)  # (N, U, G) each candidate's mass, split among its groups
        p_group = part.sum(1)  # (N, G)
        mass = p_group.sum(-1, keepdim=True)  # (N, 1) M
        reachable = A.amax(1) > 0  # (N, G)
        log_share = (1.0 - self.weight) * (p_group.clamp_min(tiny) / mass.clamp_min(tiny)).log() \
            + self.weight * q.clamp_min(tiny).log()  # (N, G)
        keep = mass > tiny  # (N, 1) rows where the LLM gives the candidates no mass stay as they are
        if self.gate == "top":  # and rows whose most likely token is not a candidate
            top = scores.argmax(-1, keepdim=True)  # (N, 1)
            keep = keep & ((tokens.unsqueeze(0) == top) & (n_t > 0)).any(-1, keepdim=True)  # (N, 1)
        # a group the LLM makes impossible (masked by the n-gram block, or below float32) stays so, and
        # one no candidate leads to gets no share: either would go to no token and shrink M
        log_share = log_share.masked_fill(((p_group <= 0) | ~reachable) & keep, -float("inf"))
        share = log_share.log_softmax(-1).exp().nan_to_num(0.0)  # (N, G) r (a row with no group left: all 0)
        new_p = mass * (share.unsqueeze(1) * part / p_group.clamp_min(tiny).unsqueeze(1)).sum(-1)  # (N, U)
        new = new_p.log() + log_z  # back on the scores' scale; a masked candidate stays -inf
        fused = keep & (n_t > 0)  # (N, U) only candidates change
        out = scores.clone()
        out[:, tokens] = torch.where(fused, new.to(scores.dtype), scores[:, tokens])
        return out


def candidates_by_loop(fusion: ClassifierFusion, generated: list[list[int]]) -> torch.Tensor:
    """(N, U, G) what ``fusion._membership`` finds, row by row in Python over the host's lists of
    ``generated`` token ids: the readable reference for its tensor version (tests), and the
    implementation before it (``benchmarks/bm_fusion.py`` times both)."""
    A = torch.zeros(len(generated), len(fusion.tokens), len(fusion.token_groups))
    column = {int(t): u for u, t in enumerate(fusion.tokens)}
    for n, gen in enumerate(generated):
        L, starts, inside = len(gen), [], False
        for g, seq in fusion.phrases:
            for j in range(min(len(seq), L + 1)):  # j tokens of the phrase already written
                begin = L - j
                if tuple(gen[begin:]) != seq[:j] or (fusion.after is not None and begin > 0 and gen[begin - 1] not in fusion.after):
                    continue
                if j == 0:
                    starts.append((column[seq[0]], g))
                else:
                    inside = True
                    A[n, column[seq[j]], g] = 1.0
        for u, g in ([] if inside else starts):
            A[n, u, g] = 1.0
    return A


def consensus_pick(candidates: list[list[str]], document_frequency=None) -> list[int]:
    """Per region, the index of its candidate caption with the highest mean CIDEr-D against the
    region's other candidates: minimum Bayes risk (MBR) decoding with CIDEr-D as the utility
    (Kumar & Byrne 2004; for captions, Devlin et al. 2015's consensus re-ranking). Where a model's
    samples disagree on a fact, the caption that agrees with most of them wins, and a wording
    the samples share outscores a rare one, which is what CIDEr rewards against the references.

    Candidates that repeat count as often as they were drawn (a sample's frequency estimates its
    probability). Ties go to the lower index (the first candidate: the greedy caption in
    ``RegionCaptioner.generate``), as does a region with a single candidate.

    Args:
        candidates: per region, its candidate captions (at least one each).
        document_frequency: CIDEr-D's n-gram document frequencies
            (:class:`~dense3d.models.losses.caption.CiderDocumentFrequency`); None: counted over
            the regions here, one document per region (all its candidates), as an evaluation
            counts one per region's references; with a single region, one per candidate (one
            document would weigh every n-gram log(1) = 0 and keep the first candidate).
    Returns:
        one index per region.
    """
    from dense3d.models.losses.caption import CiderDocumentFrequency, cider_d

    if any(not c for c in candidates):
        raise ConfigError("consensus_pick", "candidates", "at least one caption per region",
                          got=[len(c) for c in candidates])
    if document_frequency is None:
        documents = candidates if len(candidates) > 1 else [[c] for c in candidates[0]]
        document_frequency = CiderDocumentFrequency.from_references(documents)
    hyps, refs, owner = [], [], []
    for n, cands in enumerate(candidates):
        if len(cands) < 2:
            continue
        for i, c in enumerate(cands):
            hyps.append(c)
            refs.append(cands[:i] + cands[i + 1:])  # the region's other candidates, repeats kept
            owner.append((n, i))
    picks = [0] * len(candidates)
    if not hyps:
        return picks
    utility = cider_d(hyps, refs, document_frequency).tolist()  # (sum of candidates,) pycocoevalcap averages over refs
    best: dict[int, float] = {}
    for (n, i), u in zip(owner, utility):
        if n not in best or u > best[n]:
            best[n], picks[n] = u, i
    return picks


@contextlib.contextmanager
def _own_generation_config(lm, tokenizer):
    """``lm.generate`` with only the settings :func:`generate_captions` passes: transformers fills
    every setting a call leaves unset from the checkpoint's ``generation_config.json``, so a user's
    checkpoint with ``min_new_tokens``, ``suppress_tokens``, ``bad_words_ids``, ``min_p``, ... would
    change the captions silently, and SCST would score samples under other processors than
    :func:`decoding_processors` (those it was drawn with). The checkpoint's config is put back after."""
    from transformers import GenerationConfig

    own = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id)
    theirs, lm.generation_config = lm.generation_config, own
    try:
        yield
    finally:
        lm.generation_config = theirs


@torch.no_grad()
def generate_captions(lm, adapter, tokenizer, visual: torch.Tensor, prompt: str, max_new_tokens: int = 32,
                      num_beams: int = 1, batch_size: int | None = None, do_sample: bool = False,
                      temperature: float = 1.0, no_repeat_ngram_size: int = 0,
                      repetition_penalty: float = 1.0,
                      fusion: ClassifierFusion | list[ClassifierFusion] | None = None) -> tuple[list[str], list[list[int]]]:
    """Captions for N regions sharing one prompt.

    Args:
        lm: the frozen ``LlamaForCausalLM`` (the adapter attached).
        adapter: its ``LlamaAdapter``.
        tokenizer: the LLM's tokenizer.
        visual: (N, K, H) visual tokens, one row per region.
        prompt: the text prompt of this region kind.
        max_new_tokens: longest caption, in tokens (eos included).
        num_beams: 1 = greedy; > 1 = beam search.
        batch_size: regions per ``generate`` call (None: all N at once; 1: one at a time).
        do_sample: sample instead of searching (SCST); uses torch's global RNG.
        no_repeat_ngram_size: forbid repeating any n-gram of this size (0: off); stops the
            "behind the ego car, behind the ego car, ..." loops of a briefly trained adapter.
        repetition_penalty: divide the logits of tokens already in the sequence by this (CTRL's
            penalty, transformers' ``repetition_penalty``; 1.0: off).
        fusion: :class:`ClassifierFusion` processors (one per classifier: motion, relation), their
            rows in the order of ``visual``'s; applied after the processors above, in this order.
    Returns:
        (texts, token ids without the prompt, cut after eos) for the N regions.
    """
    check_decoding("generate_captions", max_new_tokens, num_beams, no_repeat_ngram_size, repetition_penalty,
                   batch_size, temperature)
    N = visual.shape[0]
    if N == 0:
        return [], []
    p = torch.tensor(prompt_ids(tokenizer, prompt), dtype=torch.long, device=visual.device)
    if p.numel() == 0:
        raise ConfigError("generate_captions", "prompt", "a prompt of at least one token", got=repr(prompt))
    fusions = [] if fusion is None else [fusion] if isinstance(fusion, ClassifierFusion) else list(fusion)
    texts, seqs = [], []
    step = batch_size or N
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for s in range(0, N, step):
        v = visual[s : s + step]  # (n, K, H)
        ids = p.unsqueeze(0).expand(v.shape[0], -1)  # (n, P): same prompt, no padding needed
        kw = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
        if fusions:
            from transformers.generation.logits_process import LogitsProcessorList

            kw["logits_processor"] = LogitsProcessorList([f.rows(s, s + v.shape[0], num_beams, prompt_length=ids.shape[1])
                                                          for f in fusions])
        with adapter.conditioned_on(v), _own_generation_config(lm, tokenizer):
            out = lm.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                num_beams=num_beams, eos_token_id=eos, pad_token_id=pad, use_cache=True,
                no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty, **kw,
            )  # (n, P + L)
        for row in out[:, ids.shape[1]:].tolist():
            if eos in row:
                row = row[: row.index(eos) + 1]
            seqs.append(row)
            texts.append(tokenizer.decode([t for t in row if t not in (eos, pad)], skip_special_tokens=True).strip())
    return texts, seqs
