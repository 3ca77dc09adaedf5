"""Relation fusion's cost per generated token: ``ClassifierFusion`` finding its candidates with
tensor operations on the scores' device against the Python loop over the host's token lists it
replaced (``candidates_by_loop``), beside one decoding step of SmolLM2-135M-Instruct.

The outdoor relation phrases of ``docs/results.md`` ("the relation chosen by its classifier"),
tokenised by SmolLM2's tokenizer, with ``after=[","]``, 30 rows (one scene's regions) and captions
of 0 to 24 tokens drawn so that phrases begin and continue often. Both ways must find the same
candidates (checked). On a GPU (``--device cuda``) the loop also reads every caption back to the
host at every token, which stalls the queue; on a CPU that cost is only the loop's own. Prints a
table and writes ``bm_fusion.json`` beside this file.

    .venv/bin/python benchmarks/bm_fusion.py [--rows 30] [--repeats 20] [--threads 0] [--device cpu]
"""
from __future__ import annotations

import argparse
import inspect
import os
import platform
import time
from pathlib import Path

import torch

from dense3d.models.captioner.decoder import smollm2_decoder
from dense3d.models.captioner.generate import ClassifierFusion, candidates_by_loop, phrase_token_sequences
from dense3d.utils.io import atomic_write_json

PHRASES = [["next to", "beside", "near"], ["ahead of"], ["behind"], ["to the left of", "left of"],
           ["to the right of", "right of"], ["between"]]
PROMPT = "Describe the object."


class LoopFusion(ClassifierFusion):
    """The processor as before: its candidates from ``candidates_by_loop`` on ``input_ids.tolist()``."""

    def _membership(self, generated: torch.Tensor) -> torch.Tensor:
        return candidates_by_loop(self, generated.tolist()).to(generated.device)


def timed(fn, repeats: int, device: torch.device) -> float:
    """Mean seconds of ``fn()`` over ``repeats`` calls after one warm-up (synchronised on a GPU)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    decoder = smollm2_decoder()
    tok, lm = decoder.tokenizer, decoder.model.to(device)
    groups = phrase_token_sequences(tok, PHRASES, PROMPT)
    after = [tok.convert_tokens_to_ids(tok.tokenize(" ,"))[-1]]  # "," as it follows a word
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(args.rows, len(groups), generator=g), -1).to(device)  # (N, G)
    new, old = (cls(groups, probs, 0.5, after=after) for cls in (ClassifierFusion, LoopFusion))
    # captions that hit the phrases: words drawn from the phrases' tokens, a comma and a few others
    pool = sorted({t for seqs in groups for s in seqs for t in s} | set(after) | set(tok(" a red car", add_special_tokens=False).input_ids))
    vocab = lm.config.vocab_size

    rows = []
    for L in (0, 4, 8, 16, 24):
        ids = torch.tensor(pool)[torch.randint(len(pool), (args.rows, L), generator=g)].to(device)  # (N, L)
        scores = torch.randn(args.rows, vocab, generator=g).to(device)  # (N, V)
        same = torch.equal(new._membership(ids), old._membership(ids))
        c_new = timed(lambda: new._membership(ids), args.repeats, device)
        c_old = timed(lambda: old._membership(ids), args.repeats, device)
        t_new = timed(lambda: new(ids, scores), args.repeats, device)
        t_old = timed(lambda: old(ids, scores), args.repeats, device)
        rows.append({"caption_tokens": L, "candidates_tensor_ms": 1e3 * c_new, "candidates_loop_ms": 1e3 * c_old,
                     "tensor_ms": 1e3 * t_new, "loop_ms": 1e3 * t_old, "same_candidates": same})

    # one decoding step of the LLM for the same rows: a 40-token prefix in the KV cache, one new token
    with torch.no_grad():
        prefix = torch.randint(vocab, (args.rows, 40), generator=g).to(device)  # (N, 40)
        past = lm(prefix, use_cache=True).past_key_values
        step_ids = prefix[:, -1:]  # (N, 1)
        # the cache grows by one token a call; a fresh copy each call would time the copy too, so the
        # step is timed on a cache that grows over the repeats (40 to 40 + repeats + 1 tokens)
        key = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"  # 5.x renamed it
        t_llm = timed(lambda: lm(step_ids, use_cache=True, **{key: past}), args.repeats, device)

    print(f"ClassifierFusion on {device} ({torch.get_num_threads()} threads), {args.rows} rows, vocabulary {vocab}, "
          f"{sum(len(s) for s in groups)} relation phrases, after=[','], mean of {args.repeats} calls")
    print("candidates: finding them alone; processor: the whole step (the candidates, then the fused scores)")
    print(f"{'caption tokens':>14} {'candidates: tensors ms':>23} {'loop ms':>8} {'loop / tensors':>15} "
          f"{'processor: tensors ms':>22} {'loop ms':>8} {'loop / tensors':>15} {'same':>5}")
    for r in rows:
        print(f"{r['caption_tokens']:14d} {r['candidates_tensor_ms']:23.2f} {r['candidates_loop_ms']:8.2f} "
              f"{r['candidates_loop_ms'] / r['candidates_tensor_ms']:15.2f} {r['tensor_ms']:22.2f} {r['loop_ms']:8.2f} "
              f"{r['loop_ms'] / r['tensor_ms']:15.2f} {str(r['same_candidates']):>5}")
    mean_new = sum(r["tensor_ms"] for r in rows) / len(rows)
    mean_old = sum(r["loop_ms"] for r in rows) / len(rows)
    print(f"one SmolLM2 decoding step for the {args.rows} rows: {1e3 * t_llm:.1f} ms; the processor is "
          f"{100 * mean_new / (1e3 * t_llm):.1f} % of it with tensors, {100 * mean_old / (1e3 * t_llm):.1f} % with the loop")
    print(f"1-min load average at the end: {os.getloadavg()[0]:.1f} (other processes slow every timing alike)")
    meta = {"rows": args.rows, "repeats": args.repeats, "threads": torch.get_num_threads(), "device": str(device),
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "load_average_1m": os.getloadavg()[0]}
    atomic_write_json(Path(__file__).with_name("bm_fusion.json"),
                      {"meta": meta, "rows": rows, "llm_step_ms": 1e3 * t_llm})


if __name__ == "__main__":
    main()
