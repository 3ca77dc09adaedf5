"""How well can the captioner write if perception were perfect? The language side's ceiling.

Each synthetic outdoor object is given as its ground-truth *facts* (``dense3d.data.synthetic.facts``)
instead of sensor features:
one-hot colour, class, motion word, ego direction (8 sectors), distance bin, relation type, and
the colour and class of its relation target(s) — everything its caption says. A small MLP maps
them to a region feature, and the captioner of ``experiment=captioning_outdoor`` (Relation
Q-Former -> LLaMA-Adapter -> frozen SmolLM2; BiCA and relation tokens off, since the facts
already hold the context) learns to caption them with teacher forcing on the annotator's
captions, exactly as in training on sensor features. Greedy captions of the validation objects
are then scored like ``dense3d eval`` scores ground-truth boxes (TOD3Cap corrected: one
reference each, CIDEr-D with IDF over the set), next to the fixed-phrasing oracle on the same
objects.

If this reaches the oracle, what a sensor-fed model lacks is perception; if it does not, the
captioner (adapter depth, steps, learning rate) is the bottleneck. ``--layers`` sets how many
top LLM layers carry adaption prompts.

    python tools/captioner_ceiling.py data/synthetic/big/outdoor --layers 4 --steps 600
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

from dense3d.data.synthetic.facts import FACT_DIM, fact_vector, load_outdoor_facts
from dense3d.errors import ConfigError, exit_status
from dense3d.structures.sample import RegionFeatures
from dense3d.utils.argtypes import non_negative_int, positive_float, positive_int
from dense3d.utils.io import atomic_write_json, check_output_path

PROG = "tools/captioner_ceiling.py"


def regions_of(objs: list[dict], facts_mlp: nn.Module) -> RegionFeatures:
    """One batch row holding ``objs`` as box regions with fact features."""
    R = len(objs)
    feats = facts_mlp(torch.stack([fact_vector(o["facts"]) for o in objs])).unsqueeze(0)  # (R, D) -> (1, R, D)
    geometry = torch.tensor([o["box"][:7] for o in objs], dtype=torch.float32).unsqueeze(0)  # (1, R, 7)
    return RegionFeatures("box", feats, geometry, torch.ones(1, R), torch.zeros(1, R, dtype=torch.long),
                          torch.ones(1, R, dtype=torch.bool))


def ceiling_config(layers: int, overrides: list[str]):
    """The captioning_outdoor config with the captioner fed fact features (cheap: nothing is built)."""
    from dense3d.engine.train import compose_config

    return compose_config(["experiment=captioning_outdoor", "model.captioner.bica=null",
                           "model.captioner.qformer.region_dim=256", "model.captioner.qformer.num_neighbours=0",
                           "model.captioner.qformer.neighbour_queries=0", "model.captioner.qformer.relation_ranks=false",
                           "model.captioner.qformer.token_dim=null", f"model.captioner.adapter.num_layers={layers}",
                           *overrides])  # bad overrides and values: one-line ConfigErrors


def build_captioner(layers: int, overrides: list[str], cfg=None):
    """(the captioner, its config); ``cfg``: :func:`ceiling_config`'s, if already composed."""
    from dense3d.utils.config import instantiate_config

    cfg = ceiling_config(layers, overrides) if cfg is None else cfg
    return instantiate_config(cfg.model.captioner, "configs/train.yaml", "model.captioner"), cfg


def score(pairs: list[tuple[str, str]]) -> dict[str, float]:
    from dense3d.eval.caption_metrics import CaptionScorer
    from dense3d.eval.tod3cap import clean

    with CaptionScorer(metrics=("BLEU", "CIDEr")) as s:
        corpus, _ = s.score_pairs([(clean(h), [clean(r)]) for h, r in pairs])
    return {"CIDEr": 100 * corpus["CIDEr"], "BLEU-4": 100 * corpus["BLEU-4"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="a generated synthetic outdoor set (dense3d convert synth --kind outdoor)")
    p.add_argument("--layers", type=positive_int, default=4, help="adapted top LLM layers")
    p.add_argument("--steps", type=positive_int, default=600)
    p.add_argument("--batch", type=positive_int, default=16, help="captions per step")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--eval-every", type=non_negative_int, default=0, help="also score at these step intervals (0: only at the end)")
    p.add_argument("--val-objects", type=positive_int, default=343, help="first N validation objects scored")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON with the scores and a few captions")
    p.add_argument("overrides", nargs="*", help="hydra overrides of the captioning_outdoor config")
    a = p.parse_args(argv)
    if a.out is not None:
        check_output_path(a.out, PROG)  # before the training
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)

    cfg = ceiling_config(a.layers, a.overrides)
    rng = cfg.data.train.transforms.transforms.range.point_range
    xy_range = (rng[0], rng[1], rng[3], rng[4])
    train = load_outdoor_facts(a.root, "train", xy_range)
    val = load_outdoor_facts(a.root, "val", xy_range)[: a.val_objects]
    if a.batch > len(train):  # random.sample would fail at the first step
        raise ConfigError(PROG, "--batch", f"at most the {len(train)} training objects of {a.root}", got=a.batch)
    if not val:
        raise ConfigError(PROG, "root", "a set with validation objects (within the config's point range)", got=str(a.root))
    captioner, cfg = build_captioner(a.layers, a.overrides, cfg)  # loads the LLM: after the checks
    facts_mlp = nn.Sequential(nn.Linear(FACT_DIM, 256), nn.ReLU(), nn.Linear(256, 256))
    params = list(facts_mlp.parameters()) + captioner.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps, eta_min=a.lr / 100)
    oracle = score([(o["fixed"], o["caption"]) for o in val])
    print(f"{len(train)} train / {len(val)} val objects; fixed-phrasing oracle on them: CIDEr {oracle['CIDEr']:.1f}", flush=True)

    def generate() -> list[str]:
        texts = []
        with torch.no_grad():
            for i in range(0, len(val), 64):
                chunk = val[i : i + 64]
                texts += [c.text for c in captioner.generate(regions_of(chunk, facts_mlp))[0]]
        return texts

    def evaluate() -> tuple[dict, list]:
        """Scores with the config's decoding settings, and ``plain/`` ones with plain greedy
        search (no n-gram block, no repetition penalty)."""
        captioner.eval()
        facts_mlp.eval()
        texts = generate()
        s = score(list(zip(texts, [o["caption"] for o in val])))
        block, penalty = captioner.no_repeat_ngram_size, captioner.repetition_penalty
        if (block, penalty) != (0, 1.0):
            captioner.no_repeat_ngram_size, captioner.repetition_penalty = 0, 1.0
            plain = score(list(zip(generate(), [o["caption"] for o in val])))
            s.update({f"plain/{k}": v for k, v in plain.items()})
            captioner.no_repeat_ngram_size, captioner.repetition_penalty = block, penalty
        captioner.train()
        facts_mlp.train()
        return s, texts

    history, t0 = [], time.time()
    for step in range(1, a.steps + 1):
        objs = random.sample(train, a.batch)
        loss = captioner(regions_of(objs, facts_mlp), None, [[o["caption"] for o in objs]])["loss_caption"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 20 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
        if (a.eval_every and step % a.eval_every == 0) or step == a.steps:
            s, texts = evaluate()
            history.append({"step": step, "loss": loss.item(), "seconds": round(time.time() - t0), **s})
            print(f"step {step}: CIDEr {s['CIDEr']:.1f} BLEU-4 {s['BLEU-4']:.1f} "
                  f"({s['CIDEr'] / oracle['CIDEr']:.2f} x oracle); plain greedy: CIDEr {s.get('plain/CIDEr', s['CIDEr']):.1f}",
                  flush=True)
    examples = [{"generated": t, "reference": o["caption"], "fixed_oracle": o["fixed"]} for t, o in zip(texts[:8], val)]
    for e in examples[:4]:
        print(" gen:", e["generated"], "\n ref:", e["reference"])
    if a.out:
        atomic_write_json(a.out, {"layers": a.layers, "steps": a.steps, "batch": a.batch, "lr": a.lr,
                                  "overrides": a.overrides, "oracle": oracle, "history": history, "examples": examples})
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/captioner_ceiling.py"))
