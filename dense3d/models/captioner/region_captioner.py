"""RegionCaptioner: BiCA -> Relation Q-Former -> LLaMA-Adapter -> frozen LLM.

Takes the perception models' proposals (``RegionFeatures``, one per kind: boxes and/or
events) and scene context queries (``SceneContext``), and

* ``forward(regions, context, captions)`` -> ``{"loss_caption": ..., "num_captions": ...}``
  (teacher-forced cross-entropy on the captions assigned to proposals, e.g. by
  :func:`dense3d.models.matching.assign_captions`);
* ``generate(regions, context)`` -> ``B`` lists of ``DenseCaption`` (every real region);
* ``scst_loss(regions, context, references)`` -> the self-critical loss (CIDEr-D reward; the
  baseline is the caption ``generate`` would give, same decoding settings, or with
  ``scst_samples > 1`` the mean reward of the region's other samples) for an optional
  fine-tuning stage.

Only BiCA, the Q-Former and the adapter train; the LLM stays frozen (``FrozenDecoder``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dense3d.errors import ConfigError
from dense3d.models.captioner.decoder import FrozenDecoder
from dense3d.models.captioner.frozen_prefix import FrozenPrefixCache, caption_loss_top_layers
from dense3d.models.captioner.generate import (ClassifierFusion, check_decoding, consensus_pick, decoding_processors,
                                               _caption_encoding, generate_captions, phrase_first_tokens,
                                               phrase_token_sequences, processed_logits, teacher_forcing_batch)
from dense3d.models.captioner.llama_adapter import LlamaAdapter
from dense3d.models.captioner.motion_hint import MotionHint
from dense3d.models.captioner.qformer import RelationQFormer
from dense3d.models.captioner.relation_hint import RelationHint
from dense3d.models.checks import check_int
from dense3d.models.context.bica import BiCADecoder, SceneContext
from dense3d.models.losses.caption import (CiderDocumentFrequency, caption_cross_entropy, cider_d, leave_one_out_baseline,
                                           scst_loss, sequence_log_probs)
from dense3d.models.losses.mention import (IGNORE, mention_words, phrase_labels, relation_labels, target_labels,
                                           target_word_spans)
from dense3d.structures.captions import DenseCaption
from dense3d.structures.sample import RegionFeatures

__all__ = ["RegionCaptioner", "DEFAULT_PROMPTS", "region_record", "bf16_is_fast"]

DEFAULT_PROMPTS = {"box": "Describe the object.", "event": "Describe the sound."}


def _as_list(x):
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def bf16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CUDA GPU that supports
    bfloat16, or a CPU with AVX512-BF16 / AMX (oneDNN's bfloat16 path). Elsewhere (AVX2-only
    CPUs) torch falls back to a scalar kernel ~60x slower than float32, so autocast must stay off.
    torch has no public test for the CPU case; ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` is
    the one torch's own tests use."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _phrase_groups(field: str, groups) -> tuple[list[str], list[list[str]]]:
    """(names, phrases per name) of a ``name -> [phrases]`` mapping (None: none), or a one-line
    ConfigError: each a non-empty list of non-empty phrases, no phrase in two groups."""
    groups = groups or {}
    if not isinstance(groups, Mapping):
        raise ConfigError("RegionCaptioner", field, "a mapping name -> list of phrases", got=type(groups).__name__)
    names, phrases, seen = list(groups), [], set()
    for name in names:
        group = groups[name]
        if isinstance(group, str) or not group or not all(isinstance(w, str) and w.strip() for w in group):
            raise ConfigError("RegionCaptioner", f"{field}.{name}", "a list of non-empty phrases", got=group)
        again = [w for w in group if w.strip().lower() in seen]
        if again:
            raise ConfigError("RegionCaptioner", f"{field}.{name}", "phrases no other group has", got=again[0])
        seen.update(w.strip().lower() for w in group)
        phrases.append([w.strip() for w in group])
    return names, phrases


def _classifier_loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{loss_NAME, num_NAME_terms, NAME_accuracy}``: the cross-entropy of (N, C) ``logits``
    over the labelled rows of (N,) ``labels`` and the argmax's accuracy in %; no labelled row: a
    zero loss with a graph."""
    logits = logits.float()
    keep = labels != IGNORE
    n = int(keep.sum())
    if n == 0:
        return {f"loss_{name}": logits.sum() * 0.0, f"num_{name}_terms": torch.tensor(0), f"{name}_accuracy": torch.zeros(())}
    right = (logits[keep].argmax(-1) == labels[keep]).float().mean() * 100.0
    return {f"loss_{name}": F.cross_entropy(logits, labels, ignore_index=IGNORE), f"num_{name}_terms": torch.tensor(n),
            f"{name}_accuracy": right.detach()}


def _one_padding_region(r: RegionFeatures) -> RegionFeatures:
    """``r`` of no regions (B, 0, ...) as one masked padding region (B, 1, ...): zero features and
    scores, label -1, unit-size boxes (zero spans) at the origin, as the detectors pad."""
    def pad(t: torch.Tensor) -> torch.Tensor:
        return t.new_zeros((t.shape[0], 1, *t.shape[2:]))  # (B, 0, ...) -> (B, 1, ...)

    geometry = pad(r.geometry)
    if geometry.shape[-1] == 7:  # boxes: unit sizes, no degenerate box
        geometry[..., 3:6] = 1.0
    return dataclasses.replace(r, features=pad(r.features), geometry=geometry, scores=pad(r.scores),
                               labels=pad(r.labels) - 1, mask=pad(r.mask),
                               tokens=None if r.tokens is None else pad(r.tokens),
                               extra={k: pad(t) for k, t in r.extra.items()})


def region_record(r: RegionFeatures, b: int, i: int, names: Sequence[str], text: str) -> DenseCaption:
    """Region ``i`` of sample ``b`` as a ``DenseCaption``: its geometry, score, class name (the
    label index where ``names`` lacks it) and per-region scalar extras (an event's azimuth)."""
    lab = int(r.labels[b, i])
    extra = {k: float(t[b, i]) for k, t in r.extra.items() if t[b, i].numel() == 1}
    return DenseCaption(r.kind, tuple(r.geometry[b, i].tolist()), float(r.scores[b, i]),
                        names[lab] if 0 <= lab < len(names) else str(lab), text, extra)


class RegionCaptioner(nn.Module):
    """Captions for region proposals with context and relations.

    Args:
        decoder: the frozen LLM and its tokenizer (loaded on first use).
        adapter: gated adaption prompts; ``prompt_len`` must equal ``qformer.num_queries``.
        qformer: the Relation Q-Former (its ``out_dim`` is the LLM's hidden size).
        bica: the BiCA decoder, or None to feed the region features straight to the
            Q-Former (the "BiCA off" ablation; then ``qformer.region_dim`` is the perception
            feature width).
        prompts: text prompt per region kind.
        max_caption_tokens: captions are cut to this many tokens in training (eos included).
        max_new_tokens: longest generated caption.
        num_beams: 1 = greedy generation (default), > 1 = beam search.
        no_repeat_ngram_size: forbid repeated n-grams of this size in generated captions (0: off).
        repetition_penalty: CTRL's penalty on tokens already generated (1.0: off).
        class_names: per kind, the class names that ``RegionFeatures.labels`` index.
        cache_frozen_layers_mb: teacher forcing keeps each caption's hidden state below the
            adapted layers (``FrozenPrefixCache``) up to this many MB and runs only the top
            layers (0: run the whole LLM every step; same loss, slower).
        llm_autocast: run the LLM (teacher forcing, generation, SCST) under ``torch.autocast``
            in bfloat16; its weights and everything that trains stay float32. On a CPU with
            native bfloat16 matrix products (AVX512-BF16, AMX) a SmolLM2 caption step with all 30
            layers adapted takes 2.0 s instead of 5.0 s, and the gradients reaching the visual
            tokens, gates and prompts point the same way (cosine 0.999, docs/captioning.md); on
            an AVX2-only CPU a bfloat16 matrix product is ~60x slower than a float32 one.
            False: float32 throughout; None (default): on where the device has native bfloat16
            matrix products (:func:`bf16_is_fast`).
        mention_aliases: class name -> other words captions name it by (``garbagebin: [trash
            can]``), for the labels of the Q-Former's ``target_order``
            (:mod:`dense3d.models.losses.mention`).
        target_word_weight: weight, in the teacher-forced caption loss, of the tokens that name
            the caption's targets (a class name other than the region's own, with the word before
            it: "the *black table*"; :func:`~dense3d.models.losses.mention.target_word_spans`); 1.0
            (default): every caption token counts the same. Needs class names for the kind (other
            kinds keep weight 1) and a fast tokenizer.
        scst_samples: captions sampled per region in :meth:`scst_loss`. 1 (default): one sample,
            the baseline its region's test-time caption (Rennie et al. 2017: a beam / greedy
            decode each step); k > 1: k samples, each one's baseline the mean reward of the
            region's k - 1 others (Luo 2020, "A better variant of self-critical sequence
            training"; no test-time decode, k times the sampled rows).
        relation_phrases: relation name -> the phrases captions state it with (``in_front_of: [in
            front of, ahead of]``). Given, a linear **relation head** reads each region's K visual
            tokens and is trained (``forward``'s ``loss_relation``) to tell which relation its
            caption states towards another region, or none
            (:func:`~dense3d.models.losses.mention.named_relation`), so the tokens the LLM reads
            must hold it. Only for kinds with class names; generation does not use the head.
            None or empty (default): no head.
        relation_input: with ``relation_phrases``, the head is a
            :class:`~dense3d.models.captioner.relation_hint.RelationHint` instead: it reads the
            pairwise geometry and relation tokens (detached), not the visual tokens, and its
            answer is added to the visual tokens through a map that starts at zero, when training
            and when generating. Its loss then shapes nothing the LLM reads.
        relation_hint_lr_scale: with ``relation_input``, the hint's classifier moves this many
            times the learning rate a step (:class:`RelationHint`'s ``lr_scale``).
        relation_hint_tokens: with ``relation_input``, the hint also reads the relation tokens and
            the region's own feature (True, default), or the pair features alone (False).
        motion_phrases: motion word -> the phrases captions state it with (``moving: [moving,
            driving]``). Given, a :class:`~dense3d.models.captioner.motion_hint.MotionHint` reads
            each box's class and geometry, is trained (``forward``'s ``loss_motion``) on the
            motion the caption states (captions that state none teach nothing), and its answer is
            added to the box's visual tokens through a map that starts at zero, when training and
            when generating. Needs the box kind's class names. None or empty (default): no hint.
        motion_hint_lr_scale: the motion hint's classifier moves this many times the learning
            rate a step (:class:`MotionHint`'s ``lr_scale``).
        hint_embed_lr_scale: the hints' maps onto the visual tokens (relation and motion) move this
            many times the learning rate a step. They start at zero and their answer must grow to
            the size of the tokens (mean |element| about 0.5 outdoors) before the LLM reads it: at
            1.0 and 2e-4 over 800 steps the maps' mean |weight| reached 0.003.
        motion_fusion: with ``motion_phrases``, the weight w in [0, 1] of the motion hint's
            classifier when generating (:class:`~dense3d.models.captioner.generate.ClassifierFusion`):
            where the LLM states a motion word, which word is chosen from the LLM's and the
            classifier's answers (w = 1: the classifier's alone). 0.0 (default): the LLM's alone.
            ``generate`` only; SCST samples without it.
        relation_fusion: with ``relation_input``, the weight w in [0, 1] of the relation hint's
            classifier when generating, as ``motion_fusion``: where the LLM begins a relation
            phrase of ``relation_phrases``, which relation it states is chosen from the LLM's and
            the classifier's answers; the LLM still writes the targets. Phrases are followed token
            by token (:func:`~dense3d.models.captioner.generate.phrase_token_sequences`), so
            "to the left of" and "to the right of" are told apart at "left" / "right". 0.0
            (default): the LLM's alone. ``generate`` only.
        relation_fusion_after: with ``relation_fusion``, the texts (one token each, ``[","]``)
            after which a relation phrase may begin, besides the caption's start. Outdoors the
            phrase that says where the box lies ("in front of the ego car", "behind the ego car")
            shares its first words with relations, but never follows a comma. None (default):
            anywhere.
        relation_fusion_phrases: with ``relation_fusion``, the phrases it follows, per relation of
            ``relation_phrases`` (the same names; a relation may have none). Leave out a phrase
            whose first token also begins other text where relations come: outdoors "in front of"
            begins "in the distance" after a comma too, and fusing it moves the distance phrase's
            mass to other relations. None (default): ``relation_phrases``.
        motion_fusion_gate, relation_fusion_gate: where each fusion acts
            (:class:`~dense3d.models.captioner.generate.ClassifierFusion`'s ``gate``): "mass", at
            every step, or "top", only where the LLM's most likely token begins or continues a
            phrase, so greedy search never states one where it would not without fusion. Defaults:
            "mass" for motion (as session 47 measured it; outdoors "top" changed 3 captions of
            808), "top" for relations (under "mass", a relation the LLM gives some mass at a
            caption's start became the fused top token there, and changed the sentence's
            template; docs/results.md, session 49).
        consensus_samples: S > 0: ``generate`` also samples S captions per region (at
            ``consensus_temperature``, the same processors and fusion) and keeps, of the greedy /
            beam caption and the S samples, the one with the highest mean CIDEr-D against the
            others (minimum Bayes risk decoding, :func:`~dense3d.models.captioner.generate.consensus_pick`):
            S + 1 times the decoded rows. 0 (default): the greedy / beam caption alone.
        consensus_temperature: the samples' softmax temperature.
        consensus_seed: the samples are drawn from torch's generator seeded with this at every
            ``generate`` call (and put back after), so a scene's captions do not depend on what ran
            before it; they do depend on which regions are decoded together (``batch_size``, the
            scenes of a batch), as the draws are shared out over the rows of one ``generate``.
    """

    def __init__(self, decoder: FrozenDecoder, adapter: LlamaAdapter, qformer: RelationQFormer,
                 bica: BiCADecoder | None = None, prompts: dict[str, str] | None = None,
                 max_caption_tokens: int = 32, max_new_tokens: int = 32, num_beams: int = 1,
                 class_names: dict[str, Sequence[str]] | None = None, no_repeat_ngram_size: int = 0,
                 repetition_penalty: float = 1.0, cache_frozen_layers_mb: int = 1024, llm_autocast: bool | None = None,
                 mention_aliases: dict[str, Sequence[str]] | None = None, target_word_weight: float = 1.0,
                 scst_samples: int = 1, relation_phrases: dict[str, Sequence[str]] | None = None,
                 relation_input: bool = False, relation_hint_lr_scale: float = 1.0, relation_hint_tokens: bool = True,
                 motion_phrases: dict[str, Sequence[str]] | None = None, motion_hint_lr_scale: float = 1.0,
                 hint_embed_lr_scale: float = 1.0, motion_fusion: float = 0.0, relation_fusion: float = 0.0,
                 relation_fusion_after: Sequence[str] | None = None,
                 relation_fusion_phrases: dict[str, Sequence[str]] | None = None, motion_fusion_gate: str = "mass",
                 relation_fusion_gate: str = "top",
                 consensus_samples: int = 0,
                 consensus_temperature: float = 1.0, consensus_seed: int = 0):
        super().__init__()
        if adapter.prompt_len != qformer.num_queries:
            raise ConfigError("RegionCaptioner", "adapter.prompt_len", f"qformer.num_queries={qformer.num_queries}",
                              got=adapter.prompt_len)
        if qformer.out.out_features != adapter.hidden_size:
            raise ConfigError("RegionCaptioner", "qformer.out_dim", f"adapter.hidden_size={adapter.hidden_size}",
                              got=qformer.out.out_features)
        if bica is not None and qformer.region_in.in_features != bica.d_model:
            raise ConfigError("RegionCaptioner", "qformer.region_dim", f"bica.d_model={bica.d_model} (BiCA's output width)",
                              got=qformer.region_in.in_features)
        if bica is not None and qformer.raw_in is not None and qformer.raw_in.in_features != bica.region_in.in_features:
            raise ConfigError("RegionCaptioner", "qformer.raw_dim",
                              f"bica.region_dim={bica.region_in.in_features} (the region features before BiCA)",
                              got=qformer.raw_in.in_features)
        check_decoding("RegionCaptioner", max_new_tokens, num_beams, no_repeat_ngram_size, repetition_penalty)
        check_int("RegionCaptioner", "max_caption_tokens", max_caption_tokens)
        check_int("RegionCaptioner", "cache_frozen_layers_mb", cache_frozen_layers_mb, 0)
        check_int("RegionCaptioner", "scst_samples", scst_samples)
        self.scst_samples = scst_samples
        self.decoder, self.adapter, self.qformer, self.bica = decoder, adapter, qformer, bica
        self.prompts = dict(DEFAULT_PROMPTS, **(prompts or {}))
        for kind, text in self.prompts.items():  # generation starts from the prompt: an empty one has no last token
            if not isinstance(text, str) or not text.strip():
                raise ConfigError("RegionCaptioner", f"prompts.{kind}", "a non-empty text prompt", got=repr(text))
        self.max_caption_tokens, self.max_new_tokens, self.num_beams = max_caption_tokens, max_new_tokens, num_beams
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.repetition_penalty = repetition_penalty
        self.class_names = {k: list(v) for k, v in (class_names or {}).items()}
        self.prefix_cache = FrozenPrefixCache(cache_frozen_layers_mb << 20) if cache_frozen_layers_mb > 0 else None
        # SCST reward's CIDEr-D document frequencies: None counts them over each batch's references;
        # DenseCaptioner.set_reward_corpus sets a corpus (the training references) before training
        self.reward_document_frequency: CiderDocumentFrequency | None = None
        self.llm_autocast = llm_autocast
        self.mention_aliases = {k: list(v) for k, v in (mention_aliases or {}).items()}
        if not (math.isfinite(target_word_weight) and target_word_weight > 0):
            raise ConfigError("RegionCaptioner", "target_word_weight", "a finite weight > 0", got=target_word_weight)
        self.target_word_weight = float(target_word_weight)
        self.relation_names, self.relation_phrases = _phrase_groups("relation_phrases", relation_phrases)
        if relation_input and not self.relation_names:
            raise ConfigError("RegionCaptioner", "relation_input", "relation_phrases to train the hint on", got="none")
        if relation_input and qformer.num_neighbours == 0:
            raise ConfigError("RegionCaptioner", "relation_input", "a Q-Former with neighbours (qformer.num_neighbours > 0)",
                              got=0)
        self.relation_input = bool(relation_input)
        # one logit per relation and one for "states none"; reads the K visual tokens of a region,
        # flattened, or (relation_input) the pairs, and is read by the LLM
        n_rel = len(self.relation_names) + 1
        if not self.relation_names:
            self.relation_head = None
        elif self.relation_input:
            self.relation_head = RelationHint(qformer.region_in.out_features, qformer.region_in.in_features,
                                              qformer.num_neighbours, n_rel, qformer.num_queries, adapter.hidden_size,
                                              lr_scale=relation_hint_lr_scale, tokens=relation_hint_tokens,
                                              embed_lr_scale=hint_embed_lr_scale)
        else:
            self.relation_head = nn.Linear(qformer.num_queries * adapter.hidden_size, n_rel)
        self.motion_names, self.motion_phrases = _phrase_groups("motion_phrases", motion_phrases)
        # settings of a part that is not built would be silently unused: one line instead
        unused = [("relation_hint_lr_scale", relation_hint_lr_scale, 1.0, self.relation_input, "relation_input"),
                  ("relation_hint_tokens", relation_hint_tokens, True, self.relation_input, "relation_input"),
                  ("motion_hint_lr_scale", motion_hint_lr_scale, 1.0, bool(self.motion_names), "motion_phrases"),
                  ("hint_embed_lr_scale", hint_embed_lr_scale, 1.0, self.relation_input or bool(self.motion_names),
                   "relation_input or motion_phrases"),
                  ("relation_fusion_after", relation_fusion_after, None, relation_fusion != 0, "relation_fusion > 0"),
                  ("relation_fusion_phrases", relation_fusion_phrases, None, relation_fusion != 0, "relation_fusion > 0"),
                  ("motion_fusion_gate", motion_fusion_gate, "mass", motion_fusion != 0, "motion_fusion > 0"),
                  ("relation_fusion_gate", relation_fusion_gate, "top", relation_fusion != 0, "relation_fusion > 0"),
                  ("consensus_temperature", consensus_temperature, 1.0, consensus_samples != 0, "consensus_samples > 0"),
                  ("consensus_seed", consensus_seed, 0, consensus_samples != 0, "consensus_samples > 0")]
        for field, value, default, used, needs in unused:
            if not used and value != default:
                raise ConfigError("RegionCaptioner", field, f"its default {default} without {needs} (nothing reads it)",
                                  got=value)
        self.motion_hint_lr_scale, self.hint_embed_lr_scale = motion_hint_lr_scale, hint_embed_lr_scale
        self.motion_hint: MotionHint | None = None
        for field, weight, built, needs in (("motion_fusion", motion_fusion, bool(self.motion_names), "motion_phrases"),
                                            ("relation_fusion", relation_fusion, self.relation_input, "relation_input")):
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
                raise ConfigError("RegionCaptioner", field, "a weight in [0, 1] (0.0: off)", got=weight)
            if weight > 0 and not built:
                raise ConfigError("RegionCaptioner", field, f"{needs} (the classifier it fuses)",
                                  got="none" if field == "motion_fusion" else self.relation_input)
        self.motion_fusion, self.relation_fusion = float(motion_fusion), float(relation_fusion)
        if relation_fusion_after is not None and (isinstance(relation_fusion_after, str) or not isinstance(
                relation_fusion_after, Sequence) or not all(isinstance(t, str) and t.strip() for t in relation_fusion_after)):
            raise ConfigError("RegionCaptioner", "relation_fusion_after", "a list of texts ([\",\"])",
                              got=relation_fusion_after)
        for field, gate in (("motion_fusion_gate", motion_fusion_gate), ("relation_fusion_gate", relation_fusion_gate)):
            if gate not in ("mass", "top"):
                raise ConfigError("RegionCaptioner", field, '"mass" or "top"', got=gate)
        self.fusion_gates = {"motion": motion_fusion_gate, "relation": relation_fusion_gate}
        self.relation_fusion_phrases = self.relation_phrases
        if relation_fusion_phrases is not None:
            if not isinstance(relation_fusion_phrases, Mapping) or set(relation_fusion_phrases) != set(self.relation_names) \
                    or any(isinstance(v, str) or not isinstance(v, Sequence) or not all(isinstance(p, str) and p.strip() for p in v)
                           for v in relation_fusion_phrases.values()):
                raise ConfigError("RegionCaptioner", "relation_fusion_phrases",
                                  f"a list of phrases for each of relation_phrases' names {self.relation_names}",
                                  got=relation_fusion_phrases)
            self.relation_fusion_phrases = [list(relation_fusion_phrases[n]) for n in self.relation_names]
        self.relation_fusion_after = None if relation_fusion_after is None else list(relation_fusion_after)
        # per (region kind, "motion" / "relation"): the phrases' tokens and the "after" token ids, read
        # from the tokenizer, which is loaded with the LLM, on first use
        self._fusion_tokens: dict[tuple[str, str], tuple[list, list[int] | None]] = {}
        check_int("RegionCaptioner", "consensus_samples", consensus_samples, 0)
        if isinstance(consensus_temperature, bool) or not isinstance(consensus_temperature, (int, float)) \
                or not (math.isfinite(consensus_temperature) and consensus_temperature > 0):
            raise ConfigError("RegionCaptioner", "consensus_temperature", "a finite number > 0", got=consensus_temperature)
        check_int("RegionCaptioner", "consensus_seed", consensus_seed, 0)
        self.consensus_samples, self.consensus_temperature = consensus_samples, float(consensus_temperature)
        self.consensus_seed = consensus_seed
        if self.class_names.get("box"):
            self.add_class_names("box", self.class_names["box"])

    def add_class_names(self, kind: str, names: Sequence[str]) -> None:
        """The class names ``RegionFeatures.labels`` of ``kind`` index, where the config gave none
        (``DenseCaptioner`` passes its detectors' before training or loading); with
        ``motion_phrases``, the box kind's build the :class:`MotionHint`, which reads each box's class."""
        self.class_names.setdefault(kind, list(names))
        if kind == "box" and self.motion_names and self.motion_hint is None:
            self.motion_hint = MotionHint(len(self.class_names["box"]), len(self.motion_names), self.qformer.num_queries,
                                          self.adapter.hidden_size, lr_scale=self.motion_hint_lr_scale,
                                          embed_lr_scale=self.hint_embed_lr_scale)

    # ------------------------------------------------------------------ parts
    def _lm(self):
        """The frozen LLM, loaded on first use, on the adapter's device, hooked."""
        lm = self.decoder.model
        dev = self.adapter.prompts.device
        if lm.device != dev:
            lm.to(dev)
        self.adapter.attach(lm)
        return lm

    def _precision(self):
        """The context the LLM runs in: bfloat16 autocast on the adapter's device, or nothing."""
        dev = self.adapter.prompts.device
        enabled = bf16_is_fast(dev) if self.llm_autocast is None else self.llm_autocast
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=enabled)

    def _zero_loss(self, visual: list[torch.Tensor]) -> torch.Tensor:
        """A zero loss with a graph (``backward`` works, every trained part gets a zero gradient):
        through the visual tokens, or, where none has one (no region at all, R = 0), through the
        trainable parameters."""
        zero = sum(v.sum() for v in visual) * 0.0
        if isinstance(zero, torch.Tensor) and zero.requires_grad or not torch.is_grad_enabled():
            return zero
        return sum(p.sum() for p in self.trainable_parameters()) * 0.0

    def trainable_parameters(self):
        """Parameters that train (BiCA, Q-Former, adapter): everything but the LLM."""
        return [p for p in self.parameters() if p.requires_grad]

    def encode(self, regions: RegionFeatures | list[RegionFeatures],
               context: SceneContext | list[SceneContext] | None = None) -> list[torch.Tensor]:
        """Visual tokens per kind: one (B, R_k, K, H) per ``RegionFeatures`` (zeros at padding)."""
        return self._encode(_as_list(regions), context)[0]

    def _encode(self, regions: list[RegionFeatures], context, captions=None):
        """:meth:`_encode_regions`, also for a kind with no regions at all (R = 0: no proposal in
        any scene of the batch), whose attention BiCA and the Q-Former cannot reshape: it runs as
        one masked padding region (as the detectors pad), and its visual tokens are (B, 0, K, H)."""
        empty = [r.mask.shape[1] == 0 for r in regions]
        if not any(empty):
            return self._encode_regions(regions, context, captions)
        padded = [_one_padding_region(r) if e else r for r, e in zip(regions, empty)]
        if captions is not None:  # B lists of 0 captions -> B lists of one None (no loss there)
            captions = [[[None] for _ in c] if e else c for c, e in zip(captions, empty)]
        visual, loss, n, hints = self._encode_regions(padded, context, captions)
        visual = [v[:, :0] if e else v for v, e in zip(visual, empty)]  # (B, 1, K, H) -> (B, 0, K, H)
        hints = [{k: h[:, :0] for k, h in hs.items()} if e else hs for hs, e in zip(hints, empty)]  # (B, 1, C) -> (B, 0, C)
        return visual, loss, n, hints

    def _encode_regions(self, regions: list[RegionFeatures], context, captions=None):
        """Visual tokens per kind and, with the Q-Former's ``target_order`` and ``captions``, the
        target head's loss: the captions' targets take the first neighbour slots (teacher
        forcing) and the head learns to pick them. A kind without class names has no labels: its
        neighbours stay nearest first. With ``relation_input``, each kind with class names gets
        the :class:`RelationHint`'s answer added to its tokens, and with ``motion_phrases`` the box
        kind the :class:`MotionHint`'s. Returns (visual, loss or None, labelled terms, per kind a
        dict of the hints' (B, R, C) logits: ``"relation"``, ``"motion"``)."""
        if self.bica is not None:
            bo = self.bica(regions, _as_list(context))
            feats, summaries = bo.objects, bo.summaries if context else [None] * len(regions)
            raw = [r.features for r in regions]  # what BiCA started from, a memory token of its own
        else:
            feats, summaries, raw = [r.features for r in regions], [None] * len(regions), [None] * len(regions)
        visual, loss, n = self._query_tokens(regions, feats, summaries, raw, captions)
        hints = [{} for _ in regions]
        for j, (r, f) in enumerate(zip(regions, feats)):
            if self.relation_input and self.class_names.get(r.kind):
                hints[j]["relation"], add = self.relation_head(r, f, self.qformer)  # (B, R, C), (B, R, K, H)
                visual[j] = visual[j] + add * r.mask[:, :, None, None].to(add.dtype)  # zeros stay at padding
            if self.motion_names and r.kind == "box":
                if self.motion_hint is None:
                    raise ConfigError("RegionCaptioner", "motion_phrases",
                                      "class names for the box kind (class_names.box, or a box detector's)", got="none")
                hints[j]["motion"], add = self.motion_hint(r)  # (B, R, M), (B, R, K, H)
                visual[j] = visual[j] + add * r.mask[:, :, None, None].to(add.dtype)
        return visual, loss, n, hints

    def _query_tokens(self, regions, feats, summaries, raw, captions):
        """The Q-Former's tokens per kind, with ``target_order`` its head's loss (see :meth:`_encode_regions`)."""
        P = self.qformer.target_order
        if not P:
            return [self.qformer(r, f, s, w) for r, f, s, w in zip(regions, feats, summaries, raw)], None, 0
        visual, logits, labels = [], [], []
        for n, (r, f, s, w) in enumerate(zip(regions, feats, summaries, raw)):
            names = self.class_names.get(r.kind)
            if not names:  # no class names, no labels: the head never learns this kind, so it keeps nearest first
                none = torch.full((*r.mask.shape, P), self.qformer.num_neighbours, dtype=torch.long, device=r.mask.device)
                visual.append(self.qformer(r, f, s, w, target_slots=none))  # slot k: no target
                continue
            if captions is None:  # generating: the head chooses
                visual.append(self.qformer(r, f, s, w))
                continue
            idx, valid = self.qformer.neighbours(r)
            slots = target_labels(idx, valid, r.labels, captions[n], self._mention_words(r.kind), P)
            v, lg = self.qformer(r, f, s, w, target_slots=slots, with_targets=True)
            visual.append(v)
            if lg is not None:  # None without neighbours (num_neighbours = 0)
                logits.append(lg.permute(0, 3, 1, 2).reshape(-1, lg.shape[2]))  # (B, R, k+1, P) -> (B*P*R, k+1)
                labels.append(slots.permute(0, 2, 1).reshape(-1))  # (B, R, P) -> (B*P*R,)
        if not logits:
            return visual, None, 0
        lg, lab = torch.cat(logits), torch.cat(labels)
        n = int((lab != IGNORE).sum())
        if n == 0:
            return visual, lg.sum() * 0.0, 0
        return visual, F.cross_entropy(lg, lab, ignore_index=IGNORE), n

    # ------------------------------------------------------------------ training
    @staticmethod
    def _check_captions(regions, captions) -> None:
        """One list per kind, of B lists of R entries each, or a one-line ConfigError."""
        if len(captions) != len(regions):
            raise ConfigError("RegionCaptioner", "captions", f"one list per region kind ({len(regions)})",
                              got=len(captions))
        for r, c in zip(regions, captions):
            B, R = r.mask.shape
            if len(c) != B or any(len(row) != R for row in c):
                raise ConfigError("RegionCaptioner", f"captions[{r.kind}]", f"{B} lists of {R} entries (str or None)")

    def _gather(self, regions, visual, captions):
        """Rows of the regions with a caption: visual (N, K, H), prompts, captions, and per row the
        character spans of the words naming its targets (None for all rows without
        ``target_word_weight``; [] for a kind without class names). The captions were checked by
        :meth:`_check_captions`."""
        weighted = self.target_word_weight != 1.0
        vis, prompts, caps, spans = [], [], [], []
        for r, v, c in zip(regions, visual, captions):
            B, R = r.mask.shape
            words = self._mention_words(r.kind) if weighted else None
            for b in range(B):
                for i in range(R):
                    ref = c[b][i]
                    if ref is not None and bool(r.mask[b, i]):
                        vis.append(v[b, i])
                        prompts.append(self.prompts[r.kind])
                        caps.append(ref)
                        spans.append(target_word_spans(ref.strip(), words, int(r.labels[b, i])) if words else [])
        return vis, prompts, caps, spans if weighted else None

    def _mention_words(self, kind: str):
        """The kind's :func:`mention_words`, or None (no class names)."""
        names = self.class_names.get(kind)
        return mention_words(names, self.mention_aliases) if names else None

    def forward(self, regions: RegionFeatures | list[RegionFeatures], context: SceneContext | list[SceneContext] | None,
                captions) -> dict[str, torch.Tensor]:
        """Teacher-forced caption loss.

        Args:
            regions: one ``RegionFeatures`` or a list (one per kind).
            context: ``SceneContext`` (or a list, or None).
            captions: per kind, B lists of R entries: the target caption (str) or None
                (no loss for that region). With a single ``RegionFeatures``, the B lists alone.
        Returns:
            ``{"loss_caption": scalar, "num_captions": long scalar}``; the loss is 0 (with a
            graph) when no region has a caption. With the Q-Former's ``target_order`` also
            ``"loss_target"`` (the target head's cross-entropy over the labelled (region, p)
            terms, :func:`~dense3d.models.losses.mention.target_labels`) and ``"num_target_terms"``;
            with ``relation_phrases`` also :meth:`_relation_loss`'s three; with ``motion_phrases``
            :meth:`_motion_loss`'s three.
        """
        single = isinstance(regions, RegionFeatures)
        regions = _as_list(regions)
        captions = [captions] if single else list(captions)
        self._check_captions(regions, captions)
        visual, target_loss, n_target, hints = self._encode(regions, context, captions)
        extra = {} if target_loss is None else {"loss_target": target_loss, "num_target_terms": torch.tensor(n_target)}
        if self.relation_head is not None:
            extra.update(self._relation_loss(regions, visual, captions, hints))
        if self.motion_names:
            extra.update(self._motion_loss(regions, captions, hints))
        vis, prompts, caps, spans = self._gather(regions, visual, captions)
        if not vis:
            zero = self._zero_loss(visual)
            return {"loss_caption": zero, "num_captions": torch.zeros((), dtype=torch.long), **extra}
        lm, tok = self._lm(), self.decoder.tokenizer
        batch = teacher_forcing_batch(tok, prompts, caps, self.max_caption_tokens, device=vis[0].device,
                                      spans=spans, span_weight=self.target_word_weight)
        with self.adapter.conditioned_on(torch.stack(vis)), self._precision():  # (N, K, H)
            if self.prefix_cache is not None:
                first = len(lm.model.layers) - self.adapter.num_layers  # the first adapted layer
                loss = caption_loss_top_layers(lm, self.prefix_cache, first, batch)
            else:
                logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (N, T, V)
                loss = caption_cross_entropy(logits.float(), batch["labels"], batch.get("weights"))
        return {"loss_caption": loss, "num_captions": torch.tensor(len(vis)), **extra}

    def _relation_loss(self, regions, visual, captions, hints=None) -> dict[str, torch.Tensor]:
        """The relation head's cross-entropy over the captioned regions of the kinds with class
        names: ``{"loss_relation", "num_relation_terms", "relation_accuracy"}`` (accuracy in %, of
        the head's argmax; 0 terms: a zero loss with a graph). The head reads the visual tokens,
        or with ``relation_input`` its logits are the hint's, ``hints``."""
        logits, labels = [], []
        for r, v, c, h in zip(regions, visual, captions, hints or [{}] * len(regions)):
            words = self._mention_words(r.kind)
            if not words:
                continue
            lab = relation_labels(c, self.relation_phrases, words).to(v.device)  # (B, R)
            lab = lab.masked_fill(~r.mask.bool(), IGNORE)
            lg = h["relation"] if self.relation_input else self.relation_head(v.flatten(2))  # (B, R, K*H) -> (B, R, C+1)
            logits.append(lg.float().flatten(0, 1))  # (B, R, C+1) -> (B*R, C+1)
            labels.append(lab.flatten())  # (B*R,)
        if not logits:
            return {}
        return _classifier_loss("relation", torch.cat(logits), torch.cat(labels))

    def _motion_loss(self, regions, captions, hints) -> dict[str, torch.Tensor]:
        """The motion hint's cross-entropy over the boxes whose caption states a motion word:
        ``{"loss_motion", "num_motion_terms", "motion_accuracy"}`` (as :meth:`_relation_loss`)."""
        for r, c, h in zip(regions, captions, hints):
            if "motion" in h:  # the box kind, the only one the hint reads
                lab = phrase_labels(c, self.motion_phrases).to(h["motion"].device)  # (B, R)
                lab = lab.masked_fill(~r.mask.bool(), IGNORE)
                return _classifier_loss("motion", h["motion"].flatten(0, 1), lab.flatten())  # (B*R, M), (B*R,)
        return {}

    def scst_loss(self, regions, context, references) -> dict[str, torch.Tensor]:
        """Self-critical sequence training loss.

        Args:
            references: like ``captions`` of :meth:`forward` but each entry a list of
                reference captions (or None / [] for regions without a match).
        Returns:
            ``{"loss_scst", "reward_sample", "reward_baseline"}`` (rewards: mean CIDEr-D), and
            ``"reward_greedy"`` (the test-time captions' reward, the baseline) with one sample.
        """
        single = isinstance(regions, RegionFeatures)
        regions = _as_list(regions)
        references = [references] if single else list(references)
        visual = self.encode(regions, context)
        lm, tok = self._lm(), self.decoder.tokenizer
        losses, rs, rb = [], [], []
        for r, v, refs in zip(regions, visual, references):
            rows = [(b, i) for b in range(r.mask.shape[0]) for i in range(r.mask.shape[1])
                    if bool(r.mask[b, i]) and refs[b][i]]
            if not rows:
                continue
            k = self.scst_samples
            vis = torch.stack([v[b, i] for b, i in rows])  # (N, K, H)
            gold = [list(refs[b][i]) for b, i in rows]
            prompt = self.prompts[r.kind]
            df = self.reward_document_frequency
            if df is None and k > 1:
                # the batch's count over its N regions, as with one sample: pycocoevalcap would count each
                # region's references k times, and an n-gram no reference has would weigh log(N k), not log(N)
                df = CiderDocumentFrequency.from_references(gold)
            with self._precision():
                if k == 1:
                    # The baseline is the caption evaluation would produce (Rennie et al.: the reward of the
                    # test-time inference), so it decodes exactly as generate() does: beams, n-gram block and
                    # repetition penalty included. Without them a looping baseline scores low and every sample
                    # looks better than what the model will actually output.
                    greedy, _ = generate_captions(lm, self.adapter, tok, vis.detach(), prompt, self.max_new_tokens,
                                                  self.num_beams, no_repeat_ngram_size=self.no_repeat_ngram_size,
                                                  repetition_penalty=self.repetition_penalty)
                # Samples draw from the same constrained distribution (transformers applies both the n-gram
                # block and the repetition penalty when sampling too); k samples per region, no beams.
                vis = vis.repeat_interleave(k, dim=0)  # (N * k, K, H): region n's samples in rows n*k .. n*k+k-1
                gold = [g for g in gold for _ in range(k)]
                sampled, seqs = generate_captions(lm, self.adapter, tok, vis.detach(), prompt, self.max_new_tokens,
                                                  do_sample=True, no_repeat_ngram_size=self.no_repeat_ngram_size,
                                                  repetition_penalty=self.repetition_penalty)
            r_s = cider_d(sampled, gold, df)  # (N * k,)
            if k == 1:
                r_b = cider_d(greedy, gold, df)  # (N,)
            else:  # each sample's baseline: the mean reward of its region's other k - 1 samples
                r_b = leave_one_out_baseline(r_s, k)  # (N * k,)
            batch = teacher_forcing_batch(tok, [prompt] * len(seqs), [""] * len(seqs), 1, device=vis.device)
            P = len(batch["input_ids"][0]) - 1  # prompt length (the empty caption adds only eos)
            L = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), P + L), tok.pad_token_id, dtype=torch.long, device=vis.device)
            lab = torch.full_like(ids, -100)
            ids[:, :P] = batch["input_ids"][:, :P]
            for n, s in enumerate(seqs):
                ids[n, P : P + len(s)] = torch.tensor(s)
                lab[n, P : P + len(s)] = torch.tensor(s)
            with self.adapter.conditioned_on(vis), self._precision():
                logits = lm(input_ids=ids, attention_mask=(lab != -100) | (torch.arange(P + L, device=ids.device) < P)).logits
            # The policy gradient needs log p(sample) under the distribution the sample was drawn from:
            # generate() applied the repetition penalty and the n-gram block at every step, so the same
            # processors, on the same prefixes (prompt + tokens so far), shape the logits scored here.
            # Both off: no processors, the raw logits as they are.
            processors = decoding_processors(self.no_repeat_ngram_size, self.repetition_penalty)
            lp = sequence_log_probs(processed_logits(logits.float(), ids, processors, P), lab)
            lengths = torch.tensor([len(s) for s in seqs], device=vis.device)
            losses.append(scst_loss(lp, r_s, r_b, lengths) * len(seqs))
            rs.append(r_s)
            rb.append(r_b)
        greedy_key = {"reward_greedy": torch.zeros(())} if self.scst_samples == 1 else {}
        if not losses:
            zero = self._zero_loss(visual)
            return {"loss_scst": zero, "reward_sample": torch.zeros(()), "reward_baseline": torch.zeros(()), **greedy_key}
        n = sum(len(x) for x in rs)
        out = {"loss_scst": sum(losses) / n, "reward_sample": torch.cat(rs).mean(), "reward_baseline": torch.cat(rb).mean()}
        if greedy_key:  # one sample: the baseline is the test-time captions' reward
            out["reward_greedy"] = out["reward_baseline"]
        return out

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, regions: RegionFeatures | list[RegionFeatures], context: SceneContext | list[SceneContext] | None = None,
                 batch_size: int | None = None, num_beams: int | None = None) -> list[list[DenseCaption]]:
        """One caption per real region, all regions of a kind decoded together (KV cache).

        Args:
            batch_size: regions per ``generate`` call (None: all; 1: one at a time).
            num_beams: overrides the constructor's.
        Returns:
            B lists of ``DenseCaption`` (boxes first, then events, in region order).
        """
        num_beams = self.num_beams if num_beams is None else num_beams
        check_decoding("RegionCaptioner.generate", self.max_new_tokens, num_beams, self.no_repeat_ngram_size,
                       self.repetition_penalty, batch_size)
        regions = _as_list(regions)
        visual, _, _, hints = self._encode(regions, context)
        lm, tok = self._lm(), self.decoder.tokenizer
        B = regions[0].mask.shape[0]
        out: list[list[DenseCaption]] = [[] for _ in range(B)]
        for r, v, h in zip(regions, visual, hints):
            rows = r.mask.bool().nonzero().tolist()  # [(b, i)]
            if not rows:
                continue
            vis = v[r.mask.bool()]  # (N, K, H), row-major order = rows
            fusion = self._fusions(tok, r, h)
            with self._precision():
                texts, _ = generate_captions(lm, self.adapter, tok, vis, self.prompts[r.kind], self.max_new_tokens,
                                             num_beams, batch_size,
                                             no_repeat_ngram_size=self.no_repeat_ngram_size,
                                             repetition_penalty=self.repetition_penalty, fusion=fusion)
                if self.consensus_samples > 0:
                    texts = self._consensus(lm, tok, vis, self.prompts[r.kind], texts, batch_size, fusion)
            names = self.class_names.get(r.kind, [])
            for (b, i), text in zip(rows, texts):
                out[b].append(region_record(r, b, i, names, text))
        return out

    def _fusions(self, tok, r: RegionFeatures, h: dict[str, torch.Tensor]) -> list[ClassifierFusion]:
        """The :class:`ClassifierFusion` processors of ``motion_fusion`` and ``relation_fusion`` for
        the regions of ``r`` (rows in the order of ``r.mask``'s True entries)."""
        out = []
        for name, weight in (("motion", self.motion_fusion), ("relation", self.relation_fusion)):
            if weight <= 0 or name not in h:
                continue
            key = (r.kind, name)
            if key not in self._fusion_tokens:
                if name == "motion":  # one-token words (refused otherwise), fused wherever they come
                    self._fusion_tokens[key] = (phrase_first_tokens(tok, self.motion_phrases, self.prompts[r.kind],
                                                                    "RegionCaptioner.motion_phrases"), None)
                else:
                    self._fusion_tokens[key] = (phrase_token_sequences(tok, self.relation_fusion_phrases, self.prompts[r.kind],
                                                                       "RegionCaptioner.relation_fusion_phrases"),
                                                self._after_ids(tok, self.prompts[r.kind]))
            groups, after = self._fusion_tokens[key]
            probs = h[name][r.mask.bool()].softmax(-1)[:, : len(groups)]  # (N, C): the relation's "none" column dropped
            out.append(ClassifierFusion(groups, probs, weight, after=after, gate=self.fusion_gates[name]))
        return out

    def _after_ids(self, tok, prompt: str) -> list[int] | None:
        """``relation_fusion_after`` as the token ids each text has inside a caption, after a word
        (a comma glued to it, a word after a space: "," and " and" are other tokens than "," and
        "and" alone for byte-level tokenizers); one token each, a ConfigError otherwise."""
        if self.relation_fusion_after is None:
            return None
        head = _caption_encoding(tok, "a", prompt)[0]
        ids = []
        for text in self.relation_fusion_after:
            text = text.strip()
            t = _caption_encoding(tok, f"a {text}" if text[0].isalnum() else f"a{text}", prompt)[0]
            if t[: len(head)] != head or len(t) != len(head) + 1:
                raise ConfigError("RegionCaptioner", "relation_fusion_after", "texts of one token each inside a caption",
                                  got=f"{text!r} is {len(t) - len(head)} tokens after a word")
            ids.append(t[-1])
        return ids

    def _consensus(self, lm, tok, vis: torch.Tensor, prompt: str, decoded: list[str], batch_size: int | None,
                   fusion: list[ClassifierFusion]) -> list[str]:
        """Per region, of its decoded caption and ``consensus_samples`` sampled ones, the one
        :func:`consensus_pick` keeps."""
        N, S = vis.shape[0], self.consensus_samples
        many = vis.repeat_interleave(S, dim=0)  # (N * S, K, H): region n's samples in rows n*S .. n*S+S-1
        fused = [f.rows(0, N, S) for f in fusion]  # their probabilities repeated as the rows are
        dev = vis.device
        # the caller's random streams stay where they were: the CPU's and the decoding device's are
        # saved and put back, and only those two are seeded (torch.manual_seed would also seed, or
        # queue a seed for, every other accelerator)
        with torch.random.fork_rng(devices=[] if dev.type == "cpu" else [dev],
                                   device_type="cuda" if dev.type == "cpu" else dev.type):
            torch.random.default_generator.manual_seed(self.consensus_seed)
            if dev.type == "cuda":
                with torch.cuda.device(dev):
                    torch.cuda.manual_seed(self.consensus_seed)  # this device's generator alone
            elif dev.type != "cpu":
                torch.get_device_module(dev.type).manual_seed(self.consensus_seed)
            sampled, _ = generate_captions(lm, self.adapter, tok, many, prompt, self.max_new_tokens,
                                           batch_size=None if batch_size is None else batch_size * S, do_sample=True,
                                           temperature=self.consensus_temperature,
                                           no_repeat_ngram_size=self.no_repeat_ngram_size,
                                           repetition_penalty=self.repetition_penalty, fusion=fused)
        candidates = [[decoded[n]] + sampled[n * S : (n + 1) * S] for n in range(N)]
        picks = consensus_pick(candidates, self.reward_document_frequency)
        return [c[k] for c, k in zip(candidates, picks)]
