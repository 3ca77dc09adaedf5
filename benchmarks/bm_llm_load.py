"""Loading the default LLM: SmolLM2-135M-Instruct read from the wheel's GGUF vs from the plain
Llama folder ``load_smollm2`` converts it to once (``dense3d.models.captioner.decoder``).

Runs in a fresh temporary cache folder (``DENSE3D_CACHE``), so the first load reads the GGUF
(and writes the folder: timed apart) and the second reads the folder; checks that both give the
same weights. Prints a table and writes ``bm_llm_load.json`` beside this file.

    .venv/bin/python benchmarks/bm_llm_load.py [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from dense3d.utils.io import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from dense3d.models.captioner import decoder

    with tempfile.TemporaryDirectory() as cache:
        os.environ["DENSE3D_CACHE"] = cache
        save = decoder.save_plain_llama
        saving = []

        def timed_save(*a, **k):  # the conversion's one-off write, timed apart from the GGUF read
            t = time.perf_counter()
            ok = save(*a, **k)
            saving.append(time.perf_counter() - t)
            return ok

        decoder.save_plain_llama = timed_save
        t0 = time.perf_counter()
        gguf, _ = decoder.load_smollm2()
        t1 = time.perf_counter()
        cached, _ = decoder.load_smollm2()
        t2 = time.perf_counter()
        decoder.save_plain_llama = save
        size = sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file())
        a, b = gguf.state_dict(), cached.state_dict()
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    read_gguf = (t1 - t0) - saving[0]
    result = {
        "gguf_read_s": round(read_gguf, 2), "cache_write_s": round(saving[0], 2), "cache_read_s": round(t2 - t1, 2),
        "speedup": round(read_gguf / (t2 - t1), 1), "cache_mb": round(size / 1e6), "same_weights": same,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
    }
    print("| load | seconds |\n|---|---|")
    print(f"| GGUF (transformers gguf_file=) | {result['gguf_read_s']:.2f} |")
    print(f"| writing the converted folder (once, {result['cache_mb']} MB) | {result['cache_write_s']:.2f} |")
    print(f"| the converted folder | {result['cache_read_s']:.2f} |")
    print(f"speed-up {result['speedup']}x; same weights: {same}")
    atomic_write_json(Path(__file__).with_suffix(".json"), result)


if __name__ == "__main__":
    main()
