"""Caption generation speed on CPU with SmolLM2-135M-Instruct: 30 regions of one scene,
all decoded together with the KV cache (one ``generate`` call) vs one region at a time.

Both runs use the same RegionCaptioner (BiCA + Relation Q-Former + LLaMA-Adapter, gates
opened at random so each region's visual tokens matter), greedy search, the same maximum
length; the benchmark checks they produce the same captions. Prints a table and writes
``bm_generate.json`` beside this file.

    .venv/bin/python benchmarks/bm_generate.py [--regions 30] [--max-new-tokens 20] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from dense3d.models.captioner.decoder import smollm2_decoder
from dense3d.models.captioner.llama_adapter import LlamaAdapter
from dense3d.models.captioner.qformer import RelationQFormer
from dense3d.models.captioner.region_captioner import RegionCaptioner
from dense3d.models.context.bica import BiCADecoder, SceneContext
from dense3d.structures.sample import RegionFeatures
from dense3d.utils.io import atomic_write_json


def scene(R: int, D: int = 256, Q: int = 64):
    g = torch.Generator().manual_seed(0)
    geo = torch.cat([torch.rand(1, R, 3, generator=g) * 60 - 30, torch.rand(1, R, 3, generator=g) * 3 + 0.5,
                     torch.rand(1, R, 1, generator=g) * 6.28], -1)
    regions = RegionFeatures("box", torch.randn(1, R, D, generator=g), geo, torch.ones(1, R),
                             torch.zeros(1, R, dtype=torch.long), torch.ones(1, R, dtype=torch.bool))
    ctx = SceneContext(torch.randn(1, Q, D, generator=g), torch.rand(1, Q, 3, generator=g) * 60 - 30,
                       torch.ones(1, Q, dtype=torch.bool))
    return regions, ctx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regions", type=int, default=30)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default). On a machine shared with other jobs, 1 thread "
                         "can be several times faster than 2 (OpenMP threads wait for each other).")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = RegionCaptioner(
        decoder=smollm2_decoder(),
        adapter=LlamaAdapter(576, 9, num_layers=8, prompt_len=8),
        qformer=RelationQFormer(256, 8, 2, num_queries=8, num_neighbours=8, region_dim=256, out_dim=576),
        bica=BiCADecoder(256, 8, 2, region_dim=256, context_dim=256),
        max_new_tokens=args.max_new_tokens,
    ).eval()
    t0 = time.perf_counter()
    model._lm()
    load_s = time.perf_counter() - t0
    with torch.no_grad():
        model.adapter.gates.normal_(0, 0.3)
    regions, ctx = scene(args.regions)
    model.generate(scene(2)[0], scene(2)[1])  # warm-up

    rows, texts = [], {}
    for name, bs in (("batched (KV cache, 1 call)", None), ("one region at a time", 1)):
        t = time.perf_counter()
        out = model.generate(regions, ctx, batch_size=bs)
        dt = time.perf_counter() - t
        texts[name] = [c.text for c in out[0]]
        rows.append({"mode": name, "seconds": dt, "captions_per_s": args.regions / dt})
    ratio = rows[0]["captions_per_s"] / rows[1]["captions_per_s"]
    agree = texts[rows[0]["mode"]] == texts[rows[1]["mode"]]

    print(f"SmolLM2-135M-Instruct on CPU ({torch.get_num_threads()} threads), {args.regions} regions, "
          f"greedy, max {args.max_new_tokens} new tokens; LLM load {load_s:.1f} s")
    print(f"{'mode':28} {'seconds':>9} {'captions/s':>11}")
    for r in rows:
        print(f"{r['mode']:28} {r['seconds']:9.2f} {r['captions_per_s']:11.2f}")
    print(f"batched / one-at-a-time speed-up: {ratio:.2f}x; same captions: {agree}")
    print(f"1-min load average at the end: {os.getloadavg()[0]:.1f} (other processes slow both runs alike)")
    print(f"example caption: {texts[rows[0]['mode']][0]!r}")
    meta = {"regions": args.regions, "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "llm_load_s": load_s,
            "load_average_1m": os.getloadavg()[0]}  # the machine may be shared: timings scale with load
    atomic_write_json(Path(__file__).with_name("bm_generate.json"),
                      {"meta": meta, "rows": rows, "speedup": ratio, "same_captions": agree})


if __name__ == "__main__":
    main()
