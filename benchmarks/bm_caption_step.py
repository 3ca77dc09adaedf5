"""One teacher-forced caption training step (forward + backward) on CPU with SmolLM2-135M-Instruct:
the whole frozen LLM every step vs the frozen lower layers read from ``FrozenPrefixCache``, and
the cached step in float32 vs under bfloat16 autocast (``RegionCaptioner(llm_autocast=True)``; the
default ``None`` turns it on only where the CPU multiplies bfloat16 natively, printed).

Captions are real synthetic TOD3Cap-style sentences (``data/synthetic/default`` when present,
else a fixed list); the visual tokens are random, the adapter's gates opened so its prompts
matter, by less per layer the more layers are adapted (random tokens at 0.3 in all 30 layers
turn the LLM to noise, loss 12.6, and the bfloat16 and float32 gradients of noise are
unrelated). The cached runs are timed after one warm-up step that fills the cache, as in
training from the second epoch on. Both cache settings compute the same loss (printed); for bfloat16 the
loss and the cosine between its and float32's gradient on the visual tokens are printed. Prints
a table and writes ``bm_caption_step.json`` beside this file.

    .venv/bin/python benchmarks/bm_caption_step.py [--captions 16] [--layers 4 8 30] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from dense3d.models.captioner.decoder import load_smollm2
from dense3d.models.captioner.frozen_prefix import FrozenPrefixCache, caption_loss_top_layers
from dense3d.models.captioner.generate import teacher_forcing_batch
from dense3d.models.captioner.llama_adapter import LlamaAdapter
from dense3d.models.captioner.region_captioner import bf16_is_fast
from dense3d.models.losses.caption import caption_cross_entropy
from dense3d.utils.io import atomic_write_json

FALLBACK = [
    "there is a black car not far away on the front right of the ego car.",
    "between the blue car and the yellow barrier, a white car is moving behind the ego car, at a medium distance.",
    "a green truck moving behind the ego car, far from the ego car, to the right of the pedestrian in red.",
    "in front of the yellow car, an orange barrier is placed to the right of the ego car, nearby.",
]


def captions(n: int) -> list[str]:
    path = Path("data/synthetic/default/outdoor/tod3cap_captions_train.json")
    pool = FALLBACK
    if path.is_file():
        data = json.loads(path.read_text())
        found = []

        def walk(x):  # every string under a "caption"/"description" key, whatever the nesting
            if isinstance(x, dict):
                for k, v in x.items():
                    if isinstance(v, str) and k in ("caption", "description"):
                        found.append(v)
                    else:
                        walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)

        walk(data)
        pool = found or FALLBACK
    return [pool[i % len(pool)] for i in range(n)]


def step(lm, adapter, batch, visual, cache, first, bf16: bool = False) -> tuple[float, float]:
    t = time.perf_counter()
    with adapter.conditioned_on(visual), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if cache is None:
            logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (N, T, V)
            loss = caption_cross_entropy(logits.float(), batch["labels"])
        else:
            loss = caption_loss_top_layers(lm, cache, first, batch)
    loss.backward()
    return time.perf_counter() - t, loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=16)
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8, 30], help="adapted top layers (L)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    lm, tok = load_smollm2()
    caps = captions(args.captions)
    batch = teacher_forcing_batch(tok, ["Describe the object."] * len(caps), caps, 32)
    n_layers = len(lm.model.layers)
    rows = []
    for L in args.layers:
        torch.manual_seed(0)
        adapter = LlamaAdapter(576, 9, num_layers=L, prompt_len=8)
        with torch.no_grad():  # opened so that L layers together change the LLM as much as 4 layers at 0.1
            adapter.gates.normal_(0, 0.1 * (4 / L) ** 0.5)
        adapter.attach(lm)
        visual = torch.randn(len(caps), 8, 576).requires_grad_()
        cache = FrozenPrefixCache()
        step(lm, adapter, batch, visual, cache, n_layers - L)  # warm-up, fills the cache
        step(lm, adapter, batch, visual, cache, n_layers - L, bf16=True)  # and bfloat16's kernels
        runs = {"full LLM": (None, False), "lower layers cached": (cache, False), "cached, bf16 autocast": (cache, True)}
        times = {name: [] for name in runs}
        losses, grads = {}, {}
        for _ in range(args.repeats):  # interleaved: load changes hit all alike
            for name, (c, bf16) in runs.items():
                adapter.zero_grad()
                visual.grad = None
                dt, losses[name] = step(lm, adapter, batch, visual, c, n_layers - L, bf16)
                times[name].append(dt)
                grads[name] = visual.grad.flatten().clone()
        full, cached, bf16 = (min(times[n]) for n in runs)
        cos = float(torch.nn.functional.cosine_similarity(grads["cached, bf16 autocast"], grads["lower layers cached"], 0))
        rows.append({"adapted_layers": L, "full_s": full, "cached_s": cached, "speedup": full / cached,
                     "loss_full": losses["full LLM"], "loss_cached": losses["lower layers cached"],
                     "cached_bf16_s": bf16, "bf16_speedup": cached / bf16,
                     "loss_cached_bf16": losses["cached, bf16 autocast"], "bf16_grad_cosine": cos})
        adapter.detach()
    native = bf16_is_fast(torch.device("cpu"))
    print(f"SmolLM2-135M-Instruct, CPU ({torch.get_num_threads()} threads), {len(caps)} captions of "
          f"{int(batch['attention_mask'].sum(1).float().mean())} tokens on average, forward + backward, best of {args.repeats}")
    print(f"native bfloat16 matmuls (AVX512-BF16/AMX): {native}; RegionCaptioner(llm_autocast=None) "
          f"{'uses' if native else 'does not use'} autocast here")
    print(f"{'adapted layers':>14} {'full LLM s':>11} {'cached s':>9} {'speed-up':>9} {'loss full':>10} {'loss cached':>12}"
          f" | {'cached bf16 s':>13} {'bf16 speed-up':>14} {'loss bf16':>10} {'grad cos':>9}")
    for r in rows:
        print(f"{r['adapted_layers']:>14} {r['full_s']:11.3f} {r['cached_s']:9.3f} {r['speedup']:8.2f}x "
              f"{r['loss_full']:10.5f} {r['loss_cached']:12.5f} | {r['cached_bf16_s']:13.3f} {r['bf16_speedup']:13.2f}x "
              f"{r['loss_cached_bf16']:10.5f} {r['bf16_grad_cosine']:9.4f}")
    meta = {"captions": len(caps), "threads": torch.get_num_threads(), "torch": torch.__version__, "bf16_native": native,
            "machine": platform.processor() or platform.machine(), "load_average_1m": os.getloadavg()[0]}
    atomic_write_json(Path(__file__).with_name("bm_caption_step.json"), {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
