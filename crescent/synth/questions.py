"""Stage: bait prompt -> raw samples -> clean -> dedup with rewrites, in resumable rounds."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from crescent.backends.base import Backend, SamplingParams
from crescent.synth.clean import clean_question
from crescent.synth.prompts import fill, user_chat
from crescent.utils.io import read_json, write_json
from crescent.utils.seeding import derive_seed


def decoding(cfg: DictConfig, n: int | None = None) -> SamplingParams:
    return SamplingParams(
        n=int(n if n is not None else cfg.get("n", 1)),
        temperature=float(cfg.temperature),
        top_p=float(cfg.top_p),
        max_new_tokens=int(cfg.max_new_tokens),
    )


def _cleaner(cfg: DictConfig) -> Callable[[str], tuple[str | None, str | None]]:
    c = cfg.questions.clean

    def clean(text: str) -> tuple[str | None, str | None]:
        out = clean_question(text, min_words=c.min_words, max_chars=c.max_chars, require_question=c.require_question)
        return out.question, out.reason

    return clean


def _rewriter(cfg: DictConfig, backend: Backend, round_idx: int):
    params = decoding(cfg.sampling.rewrite, n=1)

    def rewrite(pairs: list[tuple[str, str]], attempt: int) -> list[str]:
        prompts = [user_chat(fill(cfg.dedup.rewrite_prompt, question=q, neighbour=nb)) for q, nb in pairs]
        outs = backend.generate(prompts, params, seed=derive_seed(cfg.seed, "rewrite", round_idx, attempt))
        return [o[0] for o in outs]

    return rewrite


def run_round(cfg: DictConfig, backend: Backend, embed, index, round_idx: int, n_calls: int) -> dict:
    """One round of bait calls; returns a JSON-able record (raw, clean rejections, dedup outcome)."""
    from crescent.synth.dedup import dedup_with_rewrites

    from crescent.synth.sources import round_prompts

    t0 = time.perf_counter()
    params = decoding(cfg.sampling.question)
    prompts, meta = round_prompts(cfg, round_idx, n_calls)
    outs = backend.generate(prompts, params, seed=derive_seed(cfg.seed, "bait", round_idx))
    raw = [{"id": f"q{round_idx:05d}-{c:03d}-{s:03d}", "text": t, **meta[c]}
           for c, samples in enumerate(outs) for s, t in enumerate(samples)]
    clean = _cleaner(cfg)
    ids, texts, rejected = [], [], []
    for r in raw:
        question, reason = clean(r["text"])
        if question is None:
            rejected.append({"id": r["id"], "text": r["text"], "reason": reason, "stage": "clean"})
        else:
            ids.append(r["id"])
            texts.append(question)
    record = {"round": round_idx, "calls": n_calls, "raw": raw, "rejections": rejected, "rewrites": 0}
    if cfg.dedup.name == "none":
        record["accepted"] = [{"id": i, "text": t, "origin_id": i, "attempt": 0} for i, t in zip(ids, texts)]
        embeddings = None
    else:
        out = dedup_with_rewrites(ids, texts, index, embed, _rewriter(cfg, backend, round_idx),
                                  threshold=float(cfg.dedup.threshold), max_attempts=int(cfg.dedup.max_attempts),
                                  clean=clean)
        record["accepted"] = [{"id": a.id, "text": a.text, "origin_id": a.origin_id, "attempt": a.attempt}
                              for a in out.accepted]
        record["rejections"] += [_rejection_row(r) for r in out.rejections]
        record["rewrites"] = out.rewrites
        embeddings = out.embeddings
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return record, embeddings


def _rejection_row(r) -> dict:
    row = {**vars(r), "stage": "dedup"}
    if row.get("similarity") is not None and math.isnan(row["similarity"]):
        row["similarity"] = None  # a rewrite that failed cleaning has no similarity; keep the JSON strict
    return row


def _round_paths(workdir: Path, i: int) -> tuple[Path, Path]:
    return workdir / "rounds" / f"round_{i:05d}.json", workdir / "rounds" / f"round_{i:05d}.npy"


def _save_round(workdir: Path, record: dict, embeddings: np.ndarray | None) -> None:
    json_path, npy_path = _round_paths(workdir, record["round"])
    if embeddings is not None:
        tmp = npy_path.with_suffix(".npy.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(embeddings, dtype=np.float32))
        tmp.replace(npy_path)
    write_json(json_path, record)  # written last: its presence marks the round complete


def generate_questions(cfg: DictConfig, workdir: Path, get_backend: Callable[[], Backend],
                       get_embed: Callable[[], Callable]) -> tuple[list[dict], list[dict]]:
    """Run bait rounds until num_questions are accepted or the call budget is spent.

    Completed rounds are replayed from disk (resume); the accepted list is truncated to num_questions.
    Returns (accepted questions in order, round records). questions.source=dataset reads them instead.
    """
    from crescent.synth.dedup import DedupIndex

    if cfg.questions.get("source", "bait") == "dataset":
        return dataset_round(cfg, workdir, get_embed)

    (workdir / "rounds").mkdir(parents=True, exist_ok=True)
    target = cfg.sampling.num_questions
    per_round = int(cfg.questions.calls_per_round)
    max_calls = int(cfg.questions.max_calls)
    n_rounds = math.ceil(max_calls / per_round)
    index = None
    if cfg.dedup.name != "none":
        index = DedupIndex(384, backend=cfg.dedup.index, exact_max=int(cfg.dedup.exact_max))
    accepted: list[dict] = []
    records: list[dict] = []
    bar = tqdm(total=target or n_rounds, desc="questions" if target else "bait rounds", unit="q" if target else "round")
    for i in range(n_rounds):
        if target and len(accepted) >= target:
            break
        json_path, npy_path = _round_paths(workdir, i)
        if json_path.exists():
            record = read_json(json_path)
            embeddings = np.load(npy_path) if index is not None and record["accepted"] else None
        else:
            n_calls = min(per_round, max_calls - i * per_round)
            record, embeddings = run_round(cfg, get_backend(), get_embed() if index is not None else None,
                                           index, i, n_calls)
            _save_round(workdir, record, embeddings)
            embeddings = None  # already in the index
        if embeddings is not None and len(embeddings):
            index.add(embeddings, [a["id"] for a in record["accepted"]], [a["text"] for a in record["accepted"]])
        records.append(record)
        accepted += record["accepted"]
        bar.update(min(len(record["accepted"]), max(0, target - bar.n)) if target else 1)
        bar.set_postfix(raw=sum(len(r["raw"]) for r in records), accepted=len(accepted))
    bar.close()
    return (accepted[:target] if target else accepted), records


def dataset_round(cfg: DictConfig, workdir: Path, get_embed: Callable[[], Callable]) -> tuple[list[dict], list[dict]]:
    """LMSI: the first num_questions questions of the unlabeled dataset, as one round (dedup without
    rewrites when dedup is on: real questions are dropped, not rewritten)."""
    from crescent.synth.dedup import DedupIndex, dedup_with_rewrites
    from crescent.synth.sources import dataset_questions

    json_path, _ = _round_paths(workdir, 0)
    if json_path.exists():
        record = read_json(json_path)
        return record["accepted"], [record]
    t0 = time.perf_counter()
    offset = int(cfg.questions.dataset.get("offset", 0))
    texts = dataset_questions(cfg.questions)
    target = cfg.sampling.num_questions
    texts = texts[:target] if target else texts
    ids = [f"d{offset + i:06d}" for i in range(len(texts))]
    record = {"round": 0, "calls": 0, "raw": [{"id": i, "text": t} for i, t in zip(ids, texts)], "rejections": [],
              "rewrites": 0}
    if cfg.dedup.name == "none":
        record["accepted"] = [{"id": i, "text": t, "origin_id": i, "attempt": 0} for i, t in zip(ids, texts)]
    else:
        index = DedupIndex(384, backend=cfg.dedup.index, exact_max=int(cfg.dedup.exact_max))
        out = dedup_with_rewrites(ids, texts, index, get_embed(), lambda pairs, attempt: [], max_attempts=0,
                                  threshold=float(cfg.dedup.threshold), clean=lambda t: (t, None))
        record["accepted"] = [{"id": a.id, "text": a.text, "origin_id": a.origin_id, "attempt": a.attempt}
                              for a in out.accepted]
        record["rejections"] = [_rejection_row(r) for r in out.rejections]
    record["seconds"] = round(time.perf_counter() - t0, 3)
    (workdir / "rounds").mkdir(parents=True, exist_ok=True)
    write_json(json_path, record)
    return record["accepted"], [record]
