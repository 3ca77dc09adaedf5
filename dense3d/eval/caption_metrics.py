"""Caption scorers: pycocoevalcap's BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr-D, called one by one.

``COCOEvalCap.evaluate()`` is never used: it builds SPICE, which downloads Stanford CoreNLP
at run time. The scorers are pycocoevalcap's own classes:

* BLEU-1..4: ``Bleu(4)``, corpus-level, ``option='closest'`` (reference length closest to the
  candidate's), the value every captioning paper reports;
* METEOR 1.5: ``Meteor`` (Java, ``-l en -norm``); the corpus score is the jar's aggregate over
  the per-item statistics (not the mean of the per-item scores);
* ROUGE-L: ``Rouge`` (LCS F-measure, beta = 1.2), mean over items;
* CIDEr-D: ``Cider`` (n = 4, sigma = 6): pycocoevalcap's ``Cider`` *is* CIDEr-D -- clipped
  n-gram counts, a Gaussian length penalty with sigma 6, the x10 factor, no stemming -- with
  the IDF taken from the references of the items being scored. So the same caption scores
  differently in a different set of items, and a set of one item scores 0 (log 1 = 0).

One :class:`CaptionScorer` holds one METEOR Java process for a whole evaluation (start it
with ``with CaptionScorer() as s:``); it caches per-item statistics, so scoring the same
(candidate, references) pair again -- e.g. at IoU 0.25 and at 0.5 -- costs nothing, and the
numbers stay exactly those of the scorers called directly on the same inputs.
"""
from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

import numpy as np

from dense3d.errors import DependencyError
from dense3d.utils.progress import ProgressBar, ensure_progress

__all__ = [
    "SCORER_KEYS",
    "CaptionScorer",
    "require_java",
    "ptb_tokenize",
]

# Stable metric names, in the order reports print them.
SCORER_KEYS = ("CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L")

_JAVA_HINT = "a 'java' executable on PATH (Debian: apt-get install default-jre-headless)"


def require_java(what: str = "METEOR") -> str:
    """Path of ``java``; raises :class:`DependencyError` naming the package to install."""
    java = shutil.which("java")
    if java is None:
        raise DependencyError(what, "java", _JAVA_HINT, got="no java on PATH")
    return java


def ptb_tokenize(sentences: Mapping[object, Sequence[str]]) -> dict[object, list[str]]:
    """pycocoevalcap's ``PTBTokenizer`` (Stanford CoreNLP 3.4.1, Java): lower-cased, PTB
    tokens joined by spaces, punctuation tokens removed. Keys and list lengths are kept.

    Note: pycocoevalcap writes its temporary file beside the jar (inside site-packages).
    """
    require_java("PTBTokenizer")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # PTBTokenizer joins captions with newlines: a caption holding a newline would shift every
    # later line, and an empty one may vanish; so white space is normalised and empty captions
    # are answered "" without asking Java.
    flat = [(k, i, " ".join(str(s).split())) for k, v in sentences.items() for i, s in enumerate(v)]
    todo = [(k, i, s) for k, i, s in flat if s]
    out: dict[object, list[str]] = {k: [""] * len(v) for k, v in sentences.items()}
    if todo:
        try:
            tok = PTBTokenizer().tokenize({n: [{"caption": s}] for n, (_, _, s) in enumerate(todo)})
        except OSError as e:  # e.g. a read-only site-packages (installed by root, run by a user)
            import pycocoevalcap.tokenizer as where

            raise DependencyError("PTBTokenizer", "pycocoevalcap", f"a writable folder {where.__path__[0]} (pycocoevalcap's "
                                  "tokenizer writes its temporary file beside its jar): install pycocoevalcap where you can write",
                                  got=f"{type(e).__name__}: {e.strerror or e}") from None
        for n, (k, i, _) in enumerate(todo):
            out[k][i] = tok[n][0]
    return out


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


class _Meteor:
    """One METEOR 1.5 Java process (pycocoevalcap's ``Meteor``) with a per-pair stats cache."""

    def __init__(self):
        require_java("METEOR")
        from pycocoevalcap.meteor.meteor import Meteor

        try:
            self._m = Meteor()
        except OSError as e:  # java vanished between the check and the start
            raise DependencyError("METEOR", "java", _JAVA_HINT, got=str(e)) from e
        self._cache: dict[tuple[str, tuple[str, ...]], str] = {}
        self._lock = threading.Lock()

    def stats(self, pairs: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
        """The jar's ``SCORE`` statistics line of each (candidate, references) pair.

        The request lines are the ones pycocoevalcap's ``Meteor._stat`` builds, but they are
        streamed: a writer thread sends them all while this thread reads the answers, so the
        jar never waits for Python (pycocoevalcap's one-line ping-pong would stall on the GIL
        while other scorers run in the main thread).
        """
        with self._lock:
            todo: dict[tuple[str, tuple[str, ...]], None] = {}
            for hyp, refs in pairs:
                key = (hyp, tuple(refs))
                if key not in self._cache:
                    todo[key] = None
            if todo:
                keys = list(todo)
                lines = []
                for hyp, refs in keys:
                    # pycocoevalcap's _stat: SCORE ||| ref 1 ||| ... ||| ref n ||| hypothesis;
                    # a newline would desynchronise the jar's line protocol, so it becomes a space
                    h = _one_line(hyp).replace("|||", "").replace("  ", " ")
                    lines.append(" ||| ".join(("SCORE", " ||| ".join(_one_line(r) for r in refs), h)) + "\n")
                p = self._m.meteor_p
                payload = "".join(lines).encode()

                def write():
                    p.stdin.write(payload)
                    p.stdin.flush()

                writer = threading.Thread(target=write, daemon=True)
                writer.start()
                answers = [p.stdout.readline().decode().strip() for _ in keys]
                writer.join()
                if answers and not answers[-1]:
                    raise DependencyError("METEOR", "java process", "a running METEOR 1.5 jar", got=f"it ended (exit {p.poll()})")
                self._cache.update(zip(keys, answers))
            return [self._cache[(hyp, tuple(refs))] for hyp, refs in pairs]

    def score(self, pairs: Sequence[tuple[str, Sequence[str]]]) -> tuple[float, list[float]]:
        """Same as ``Meteor().compute_score`` on these pairs: (aggregate, per-item)."""
        stats = self.stats(pairs)
        with self._lock:
            p = self._m.meteor_p
            p.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
            p.stdin.flush()
            per_item = [float(p.stdout.readline().strip()) for _ in stats]
            total = float(p.stdout.readline().strip())
        return total, per_item

    def close(self) -> None:
        """End the Java process (pycocoevalcap's ``__del__`` does the same again, harmlessly:
        closing a closed pipe and killing a reaped process are no-ops)."""
        m, self._m = getattr(self, "_m", None), None
        if m is not None:
            with m.lock:
                m.meteor_p.stdin.close()
                m.meteor_p.kill()
                m.meteor_p.wait()


class CaptionScorer:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D over ``{key: [candidate]}`` / ``{key: [refs...]}``.

    Use one per evaluation (``with CaptionScorer() as s: ...``): the METEOR Java process starts
    at the first METEOR request and ends at ``close()``. ``metrics`` picks the scorers
    (default: all four families); leaving METEOR out needs no Java.
    """

    def __init__(self, metrics: Sequence[str] = ("BLEU", "METEOR", "ROUGE-L", "CIDEr")):
        unknown = set(metrics) - {"BLEU", "METEOR", "ROUGE-L", "CIDEr"}
        if unknown:
            raise ValueError(f"unknown caption metrics {sorted(unknown)}")
        self.metrics = tuple(metrics)
        self._meteor: _Meteor | None = None
        self._bleu_cache: dict = {}
        self._rouge_cache: dict = {}
        if "METEOR" in self.metrics:
            require_java("METEOR")

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "CaptionScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._meteor is not None:
            self._meteor.close()
            self._meteor = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def meteor(self) -> _Meteor:
        if self._meteor is None:
            self._meteor = _Meteor()
        return self._meteor

    # ------------------------------------------------------------------ scorers
    def bleu(self, pairs: Sequence[tuple[str, Sequence[str]]]) -> tuple[list[float], list[list[float]]]:
        """``Bleu(4).compute_score`` (option 'closest'): ([B1..B4] corpus, per-item lists)."""
        from pycocoevalcap.bleu.bleu_scorer import BleuScorer

        total = BleuScorer(n=4)
        for hyp, refs in pairs:
            key = (hyp, tuple(refs))
            one = self._bleu_cache.get(key)
            if one is None:
                one = BleuScorer(test=hyp, refs=list(refs), n=4)  # cooks this pair's n-gram stats
                self._bleu_cache[key] = one
            total += one  # appends the cooked stats (no re-cooking)
        score, scores = total.compute_score(option="closest", verbose=0)
        return [float(s) for s in score], [[float(x) for x in s] for s in scores]

    def rouge(self, pairs: Sequence[tuple[str, Sequence[str]]]) -> tuple[float, list[float]]:
        """``Rouge().compute_score``: mean of the per-item ROUGE-L (beta 1.2)."""
        from pycocoevalcap.rouge.rouge import Rouge

        r = Rouge()
        per = []
        for hyp, refs in pairs:
            key = (hyp, tuple(refs))
            s = self._rouge_cache.get(key)
            if s is None:
                s = float(r.calc_score([hyp], list(refs)))
                self._rouge_cache[key] = s
            per.append(s)
        return float(np.mean(np.array(per))), per

    @staticmethod
    def cider(pairs: Sequence[tuple[str, Sequence[str]]]) -> tuple[float, list[float]]:
        """``Cider().compute_score`` (CIDEr-D, n 4, sigma 6; IDF from these pairs' references)."""
        from pycocoevalcap.cider.cider import Cider

        gts = {i: list(refs) for i, (_, refs) in enumerate(pairs)}
        res = {i: [hyp] for i, (hyp, _) in enumerate(pairs)}
        score, scores = Cider().compute_score(gts, res)
        return float(score), [float(s) for s in scores]

    def score_pairs(self, pairs: Sequence[tuple[str, Sequence[str]]], progress: ProgressBar | None = None,
                    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """All selected metrics on a list of (candidate, references) pairs.

        Returns (corpus scores, per-item scores), keyed by :data:`SCORER_KEYS`. ``progress``:
        see :meth:`score_many`.
        """
        return self.score_many([pairs], progress=progress)[0]

    def score_many(self, pair_sets: Sequence[Sequence[tuple[str, Sequence[str]]]], progress: ProgressBar | None = None,
                   names: Sequence[str] | None = None) -> list[tuple[dict[str, float], dict[str, list[float]]]]:
        """:meth:`score_pairs` for several sets (e.g. one per IoU threshold), each scored on its
        own. METEOR for every set runs in its Java process (one worker thread) while Python
        computes the other scorers: on two cores the two overlap.

        ``progress`` (:mod:`dense3d.utils.progress`) gets one stage per Python scorer and set
        (``"CIDEr"``, ``"BLEU"``, ``"ROUGE-L"``, followed by ``names[i]``, or by "set i/n" when
        there are several sets) and one for waiting on ``"METEOR (Java)"``."""
        for pairs in pair_sets:
            for i, (hyp, refs) in enumerate(pairs):
                # a bare string of references would be split into its characters, each a reference
                if not isinstance(hyp, str) or isinstance(refs, str) or len(refs) == 0 or not all(isinstance(r, str) for r in refs):
                    got = f"{hyp!r}" if not isinstance(hyp, str) else f"{refs!r}"
                    raise ValueError(f"pair {i}: expected a string candidate and a list of >= 1 reference strings, got {got}")
        todo = [ps for ps in pair_sets if ps]
        bar = ensure_progress(progress)
        python_metrics = [m for m in ("CIDEr", "BLEU", "ROUGE-L") if m in self.metrics]
        java = "METEOR" in self.metrics and bool(todo)
        bar.add_total(len(python_metrics) * len(todo) + int(java))
        if names is None:  # stage names say which set only where there are several
            names = [f"set {i + 1}/{len(pair_sets)}" if len(pair_sets) > 1 else "" for i in range(len(pair_sets))]
        todo_names = [n for n, ps in zip(names, pair_sets) if ps]
        results: list[tuple[dict[str, float], dict[str, list[float]]]] = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(lambda: [self.meteor.score(ps) for ps in todo]) if java else None
            for pairs, name in zip(todo, todo_names):
                corpus: dict[str, float] = {}
                per: dict[str, list[float]] = {}
                suffix = f" {name}" if name else ""
                if "CIDEr" in self.metrics:
                    bar.update("CIDEr" + suffix)
                    corpus["CIDEr"], per["CIDEr"] = self.cider(pairs)
                    bar.advance()
                if "BLEU" in self.metrics:
                    bar.update("BLEU" + suffix)
                    b, bs = self.bleu(pairs)
                    for n in range(4):
                        corpus[f"BLEU-{n + 1}"], per[f"BLEU-{n + 1}"] = b[n], bs[n]
                    bar.advance()
                if "ROUGE-L" in self.metrics:
                    bar.update("ROUGE-L" + suffix)
                    corpus["ROUGE-L"], per["ROUGE-L"] = self.rouge(pairs)
                    bar.advance()
                results.append((corpus, per))
            if fut is not None:
                bar.update("METEOR (Java)" + (f" {todo_names[0]}" if len(todo) == 1 and todo_names[0] else ""))
                for (corpus, per), (total, items) in zip(results, fut.result()):
                    corpus["METEOR"], per["METEOR"] = total, items
                bar.advance()
        out, it = [], iter(results)
        for pairs in pair_sets:
            if not pairs:
                out.append(({}, {}))
                continue
            corpus, per = next(it)
            order = [k for k in SCORER_KEYS if k in corpus]
            out.append(({k: corpus[k] for k in order}, {k: per[k] for k in order}))
        return out

    def score(self, gts: Mapping[object, Sequence[str]], res: Mapping[object, Sequence[str]]):
        """pycocoevalcap's calling convention: ``gts[k]`` references, ``res[k]`` = [candidate]."""
        if set(gts) != set(res):
            raise ValueError("gts and res must have the same keys")
        keys = list(gts)
        for k in keys:  # pycocoevalcap's scorers assert one candidate per key: a second was ignored silently
            if isinstance(res[k], str) or len(res[k]) != 1:
                raise ValueError(f"res[{k!r}]: expected a list of exactly one candidate caption, got {res[k]!r}")
            if isinstance(gts[k], str):  # list() below would make each character a reference
                raise ValueError(f"gts[{k!r}]: expected a list of reference captions, got {gts[k]!r}")
        pairs = [(res[k][0], list(gts[k])) for k in keys]
        return self.score_pairs(pairs)

