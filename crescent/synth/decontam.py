"""Benchmark decontamination: every accepted question measured against the eval benchmarks' test sets.

Two signals, each reported per question with the closest test item:
  ngram      a shared word 13-gram after lm-eval's Janitor normalisation (lowercase ASCII, punctuation
             deleted, whitespace split): the GPT-3 / open-instruct / lm-eval decontamination convention.
             Score: the fraction of the question's 13-grams found in that test item.
  embedding  cosine similarity of the dedup embedder's vectors (all-MiniLM-L6-v2) to the nearest test
             item, looked up in the dedup index (crescent.synth.dedup.DedupIndex), >= `threshold`. With
             `match_numbers` (default) the question must also carry the test item's numbers (same multiset):
             a paraphrase keeps the problem and its answer; a changed-numbers variant (GSM-Plus's
             "numerical substitution") is another problem and is reported but not flagged. Sentence
             embeddings barely see numbers, so without this the two cannot be told apart.

policy: report (flag, keep everything) | drop (flagged questions and their SFT rows are removed from this
run's synth/ copy; the cached generation is untouched) | off.

The test sets are handed in by the caller ({benchmark: [(test_id, text), ...]}): this stage does not read
the eval stage's data itself. Test-set vectors are cached on disk (paths.synth_cache/decontam/) by the sha256 of their texts.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from crescent.utils.hashing import stable_hash

log = logging.getLogger(__name__)
TestSets = Mapping[str, Sequence[tuple[str, str]]]
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


@lru_cache(maxsize=1)
def _janitor():
    """lm-eval's Janitor (its normalisation) and word_ngrams. Its module prints a notice and a traceback when the
    optional C++ helper is missing; the pure-Python path is the one used here, so that noise is swallowed."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from lm_eval.decontamination.janitor import Janitor, word_ngrams
    return Janitor(ngram_n=13), word_ngrams


def normalize(text: str) -> str:
    """lm-eval's Janitor.normalize_string: ASCII lowercase, string.punctuation deleted."""
    return _janitor()[0].normalize_string(text)


def ngrams(text: str, n: int = 13) -> set[str]:
    """The word n-grams of the normalised text (a text shorter than n words has none)."""
    return set(_janitor()[1](normalize(text), n))


def numbers(text: str) -> list[str]:
    """The numbers written in digits, commas and trailing zeros dropped, sorted ('1,200.50' -> '1200.5')."""
    out = []
    for m in _NUMBER.findall(text):
        v = m.replace(",", "")
        if "." in v:
            v = v.rstrip("0").rstrip(".")
        out.append(v)
    return sorted(out)


@dataclass(frozen=True)
class TestItem:
    benchmark: str
    test_id: str
    text: str


def _items(test_sets: TestSets) -> list[TestItem]:
    return [TestItem(b, str(i), t) for b, rows in test_sets.items() for i, t in rows if isinstance(t, str) and t]


class NgramIndex:
    """{13-gram: test items containing it}, built once per set of test items."""

    def __init__(self, items: Sequence[TestItem], n: int = 13):
        self.n = n
        self.items = list(items)
        self.lookup: dict[str, list[int]] = {}
        for k, item in enumerate(self.items):
            for g in ngrams(item.text, n):
                self.lookup.setdefault(g, []).append(k)

    def best(self, text: str) -> tuple[int, float, int]:
        """(test item index or -1, fraction of the text's n-grams in that item, shared n-grams count)."""
        grams = ngrams(text, self.n)
        hits: dict[int, int] = {}
        for g in grams:
            for k in self.lookup.get(g, ()):
                hits[k] = hits.get(k, 0) + 1
        if not hits:
            return -1, 0.0, 0
        k = min(hits, key=lambda i: (-hits[i], i))
        return k, hits[k] / len(grams), hits[k]


def _vectors(texts: list[str], embed: Callable[[list[str]], np.ndarray], cache_dir: str | Path | None) -> np.ndarray:
    """embed(texts), memoised on disk under cache_dir/decontam/ by the stable_hash of the texts (test sets are fixed)."""
    if cache_dir is None:
        return np.asarray(embed(texts), dtype=np.float32)
    digest = stable_hash(texts)
    path = Path(cache_dir) / "decontam" / f"test_vectors_{digest}.npy"
    if path.is_file():
        return np.load(path)
    vecs = np.asarray(embed(texts), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vecs)
    tmp.replace(path)
    return vecs


def measure(questions: Sequence[Mapping], test_sets: TestSets, *, n: int = 13,
            embed: Callable[[list[str]], np.ndarray] | None = None, threshold: float = 0.9,
            match_numbers: bool = True, index: str = "exact", cache_dir: str | Path | None = None,
            top: int = 20) -> tuple[list[dict], dict]:
    """(pairs, counts) for questions [{id, text}] against the test sets.

    pairs: per question and signal its closest test item when flagged, plus the `top` closest embedding pairs
    that were not flagged (to show the margin): {question_id, question, test, benchmark, test_id, test_text,
    score, flagged, numbers_match}. counts: checked, test_items, flagged_ngram, flagged_embedding, flagged
    (either signal), and per benchmark. embed=None measures n-grams only."""
    from crescent.synth.dedup import DedupIndex

    items = _items(test_sets)
    grams = NgramIndex(items, n)
    pairs: list[dict] = []
    flagged: dict[str, set[str]] = {}

    def pair(q: Mapping, k: int, test: str, score: float, hit: bool) -> dict:
        item = items[k]
        return {"question_id": q["id"], "question": q["text"], "test": test, "benchmark": item.benchmark,
                "test_id": item.test_id, "test_text": item.text, "score": round(float(score), 4), "flagged": hit,
                "numbers_match": numbers(q["text"]) == numbers(item.text)}

    for q in questions:
        k, score, shared = grams.best(q["text"])
        if k >= 0:
            pairs.append({**pair(q, k, "ngram", score, True), "shared_ngrams": shared})
            flagged.setdefault(q["id"], set()).add("ngram")
    if embed is not None and items and questions:
        test_vecs = np.concatenate([_vectors([it.text for it in items if it.benchmark == b], embed, cache_dir)
                                    for b in dict.fromkeys(it.benchmark for it in items)])  # cached per benchmark
        idx = DedupIndex(test_vecs.shape[1], backend=index)
        idx.add(test_vecs, [str(i) for i in range(len(items))], [it.text for it in items])
        sims, nearest = idx.nearest(np.asarray(embed([q["text"] for q in questions]), dtype=np.float32))
        near = []
        for q, s, k in zip(questions, sims, nearest):
            p = pair(q, int(k), "embedding", float(s), False)
            p["flagged"] = bool(np.float64(s) >= np.float64(threshold)) and (p["numbers_match"] or not match_numbers)
            if p["flagged"]:
                pairs.append(p)
                flagged.setdefault(q["id"], set()).add("embedding")
            else:
                near.append(p)
        pairs += sorted(near, key=lambda p: -p["score"])[:top]
    by_bench: dict[str, int] = {}
    for p in pairs:
        if p["flagged"]:
            by_bench[p["benchmark"]] = by_bench.get(p["benchmark"], 0) + 1
    counts = {"checked": len(questions), "test_items": len(items),
              "flagged_ngram": sum("ngram" in s for s in flagged.values()),
              "flagged_embedding": sum("embedding" in s for s in flagged.values()),
              "flagged": len(flagged), "flagged_pairs_by_benchmark": dict(sorted(by_bench.items()))}
    return pairs, counts


def flagged_ids(pairs: Iterable[Mapping]) -> set[str]:
    return {p["question_id"] for p in pairs if p["flagged"]}


def settings(decontam_cfg: Mapping) -> dict:
    """The keys that change the measurement (its cache key, with the test texts); not the policy: drop after
    report reuses the report's measurement."""
    keys = ("ngram", "embedding", "threshold", "match_numbers", "top", "text_fields", "benchmarks")
    return {k: decontam_cfg.get(k) for k in keys}
