"""One self-critical (SCST) training step against one teacher-forced step of the same captioner on
CPU with SmolLM2-135M-Instruct, every layer adapted (as ``experiment=captioning_indoor``).

Both steps see the same regions (``--scenes`` scenes of 8 boxes, each with three reference
descriptions from the synthetic indoor grammar's wording) and run forward + backward. The SCST
step decodes each region twice (the greedy baseline, a sample), scores both with CIDEr-D, and
scores the samples once more with gradients; its parts are timed apart (the two decodings are
timed by calling ``generate_captions`` as the step does). The adapter's gates are opened at random,
so each region's tokens matter; the decoded captions then run to about ``--max-new-tokens``
tokens (printed), where a trained captioner's indoor captions are 20-25 tokens. Also compared: the
reward's document frequencies from the batch (default) and from a corpus
(``scst_document_frequency=train``; here 1,000 copies of the references' wording), and with
``--samples k`` (k >= 2) the step that draws k samples per region and takes each sample's baseline
from the region's other samples (``model.captioner.scst_samples=k``: no greedy decoding, k times
the sampled rows). Prints a table and writes ``bm_scst_step.json`` beside this file.

    .venv/bin/python benchmarks/bm_scst_step.py [--scenes 2] [--max-new-tokens 24] [--repeats 2] [--threads 1] [--samples 4]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from dense3d.models.captioner.decoder import smollm2_decoder
from dense3d.models.captioner.generate import generate_captions
from dense3d.models.captioner.llama_adapter import LlamaAdapter
from dense3d.models.captioner.qformer import RelationQFormer
from dense3d.models.captioner.region_captioner import RegionCaptioner, bf16_is_fast
from dense3d.models.context.bica import BiCADecoder, SceneContext
from dense3d.models.losses.caption import CiderDocumentFrequency
from dense3d.structures.sample import RegionFeatures
from dense3d.utils.io import atomic_write_json

COLOURS = ["brown", "white", "black", "grey", "blue", "red", "green", "beige"]
CLASSES = ["chair", "table", "door", "sofa", "bed", "desk", "cabinet", "lamp"]


def references(b: int, i: int) -> list[str]:
    """Three descriptions of box i of scene b, in the synthetic indoor rooms' three wordings."""
    c, k, t = COLOURS[(b + i) % 8], CLASSES[i % 8], CLASSES[(i + 3) % 8]
    return [f"there is a {c} {k}. it is near the {COLOURS[i % 8]} {t}. the {k} is against the wall.",
            f"this is a {c} {k}. it is next to the {COLOURS[i % 8]} {t}. it is by the wall.",
            f"the {k} is {c} and stands against the wall. it is near the {COLOURS[i % 8]} {t}."]


def scenes(B: int, R: int = 8, D: int = 256, Q: int = 64):
    g = torch.Generator().manual_seed(0)
    geo = torch.cat([torch.rand(B, R, 3, generator=g) * 8, torch.rand(B, R, 3, generator=g) + 0.5,
                     torch.zeros(B, R, 1)], -1)  # (B, R, 7): centre, size, yaw
    regions = RegionFeatures("box", torch.randn(B, R, D, generator=g), geo, torch.ones(B, R),
                             torch.zeros(B, R, dtype=torch.long), torch.ones(B, R, dtype=torch.bool))
    ctx = SceneContext(torch.randn(B, Q, D, generator=g), torch.rand(B, Q, 3, generator=g) * 8,
                       torch.ones(B, Q, dtype=torch.bool))
    refs = [[references(b, i) for i in range(R)] for b in range(B)]
    return regions, ctx, refs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=2, help="scenes of 8 boxes per step (captioning_indoor: 2)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--samples", type=int, default=1,
                    help="also time the step with this many samples per region (scst_samples; 1: that row left out)")
    args = ap.parse_args()
    if args.samples < 1:
        ap.error(f"--samples: an integer >= 1, got {args.samples}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = RegionCaptioner(
        decoder=smollm2_decoder(),
        adapter=LlamaAdapter(576, 9, num_layers=30, prompt_len=8),
        qformer=RelationQFormer(256, 8, 2, num_queries=8, num_neighbours=8, region_dim=256, out_dim=576),
        bica=BiCADecoder(256, 8, 2, region_dim=256, context_dim=256),
        max_new_tokens=args.max_new_tokens,
    )
    model._lm()
    with torch.no_grad():
        model.adapter.gates.normal_(0, 0.05)
    regions, ctx, refs = scenes(args.scenes)
    captions = [[r[0] for r in row] for row in refs]
    corpus = CiderDocumentFrequency.from_references([r for row in refs for r in row] * 1000)

    def teacher_forced() -> dict:
        t = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model(regions, ctx, captions)["loss_caption"].backward()
        return {"step_s": time.perf_counter() - t}

    def scst(df, k: int = 1) -> dict:
        model.reward_document_frequency = df
        model.scst_samples = k
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        out = model.scst_loss(regions, ctx, refs)
        t_loss = time.perf_counter() - t
        out["loss_scst"].backward()
        step = time.perf_counter() - t
        # the decodings the step ran, once more on their own: greedy (the baseline; one sample only)
        # and the samples (k per region)
        vis = model.encode([regions], [ctx])[0].detach()[regions.mask]  # (N, K, H) of the masked regions
        prompt = model.prompts["box"]
        row = {"step_s": step, "loss_s": t_loss, "samples_per_region": k}
        with torch.no_grad(), model._precision():
            if k == 1:
                t = time.perf_counter()
                generate_captions(model._lm(), model.adapter, model.decoder.tokenizer, vis, prompt, args.max_new_tokens)
                row["greedy_decode_s"] = time.perf_counter() - t
            t = time.perf_counter()
            _, seqs = generate_captions(model._lm(), model.adapter, model.decoder.tokenizer,
                                        vis.repeat_interleave(k, dim=0), prompt, args.max_new_tokens, do_sample=True)
            row["sample_decode_s"] = time.perf_counter() - t
        row.update(sample_tokens=sum(len(s) for s in seqs) / len(seqs), reward_sample=float(out["reward_sample"]),
                   reward_baseline=float(out["reward_baseline"]))
        return row

    teacher_forced(), scst(None)  # warm-up
    runs = {"teacher-forced": teacher_forced, "SCST, batch frequencies": lambda: scst(None),
            "SCST, corpus frequencies": lambda: scst(corpus)}
    if args.samples > 1:
        runs[f"SCST, {args.samples} samples"] = lambda: scst(None, args.samples)
    best: dict[str, dict] = {}
    for _ in range(args.repeats):  # interleaved: load changes hit all alike
        for name, fn in runs.items():
            r = fn()
            if name not in best or r["step_s"] < best[name]["step_s"]:
                best[name] = r
    base = best["teacher-forced"]["step_s"]
    n = int(regions.mask.sum())
    autocast = bf16_is_fast(torch.device("cpu")) if model.llm_autocast is None else model.llm_autocast
    print(f"SmolLM2-135M-Instruct, 30 adapted layers, CPU ({torch.get_num_threads()} threads, bfloat16 autocast "
          f"{'on' if autocast else 'off'}), "
          f"{n} regions a step, forward + backward, best of {args.repeats}")
    print(f"{'step':26} {'seconds':>8} {'x teacher-forced':>17} {'greedy decode s':>16} {'sample decode s':>16} {'sample tokens':>14}")
    rows = []
    for name, r in best.items():
        rows.append({"step": name, **r, "x_teacher_forced": r["step_s"] / base})
        greedy = f"{r['greedy_decode_s']:16.2f}" if "greedy_decode_s" in r else f"{'-':>16}"
        extra = (f"{greedy} {r['sample_decode_s']:16.2f} {r['sample_tokens']:14.1f}"
                 if "sample_decode_s" in r else f"{'':>16} {'':>16} {'':>14}")
        print(f"{name:26} {r['step_s']:8.2f} {r['step_s'] / base:16.1f}x {extra}")
    meta = {"regions": n, "bf16_autocast": autocast, "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "load_average_1m": os.getloadavg()[0]}
    atomic_write_json(Path(__file__).with_name("bm_scst_step.json"), {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
