"""Stage: bait prompt -> raw samples -> clean -> dedup with rewrites, in resumable rounds."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from crescent.backends.base import Backend, SamplingParams
from crescent.utils.locks import UnitLock
from crescent.backends.units import Unit, generate_batched, run_units
from crescent.synth.clean import clean_question
from crescent.synth.prompts import fill, user_chat
from crescent.utils.io import DamagedFileError, read_json, write_json
from crescent.utils.seeding import derive_seed

log = logging.getLogger(__name__)


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


def _rewriter(cfg: DictConfig, get_backend: Callable[[], Backend], pass_idx: int):
    params = decoding(cfg.sampling.rewrite, n=1)

    def rewrite(pairs: list[tuple[str, str]], attempt: int) -> list[str]:
        """All duplicates of a pass, rewritten in ONE engine call per attempt."""
        prompts = [user_chat(fill(cfg.dedup.rewrite_prompt, question=q, neighbour=nb)) for q, nb in pairs]
        seed = derive_seed(cfg.seed, "rewrite", pass_idx, attempt)
        outs = generate_batched(get_backend(), [prompts], params, [seed], [0], int(cfg.seed),
                                ("rewrite", pass_idx, attempt))[0]
        return [o[0] for o in outs]

    return rewrite


def rounds_per_pass(cfg: DictConfig, n_rounds: int) -> int:
    """questions.rounds_per_pass: bait rounds sampled together and then deduplicated together (null: all)."""
    r = cfg.questions.get("rounds_per_pass", 1)
    if r is None:
        return max(n_rounds, 1)
    if int(r) < 1:
        raise ValueError(f"questions.rounds_per_pass={r!r}; allowed: an integer >= 1, or null (all rounds in one pass)")
    return int(r)


def engine_call_bound(cfg: DictConfig) -> dict:
    """Upper bound on engine (generate/chat) calls of the generate stage with a per-request-seed backend (vLLM),
    for one process holding every unit:

        bait      <= P * (1 + dedup.max_attempts)   P = ceil(ceil(max_calls / calls_per_round) / rounds_per_pass)
        answers   <= 1                                (all questions x k in one call)
        reflect   <= 1                                (voting.reflect)
        verify    <= the verifier's sequential steps  (cot_*: 1; tournament: ceil(log2 k) rounds; all_of: the sum)

    It grows with the number of passes P, never with the number of questions (hf/fast make one call per unit
    instead: their rows are seeded per unit)."""
    n_rounds = math.ceil(int(cfg.questions.max_calls) / int(cfg.questions.calls_per_round))
    source = cfg.questions.get("source", "bait")
    passes = 0 if source == "dataset" else math.ceil(n_rounds / rounds_per_pass(cfg, n_rounds))
    attempts = int(cfg.dedup.get("max_attempts", 0)) if cfg.dedup.name != "none" else 0
    k = int(cfg.voting.k)

    def verify_steps(v) -> int:
        name = v.get("name", "none") if v is not None else "none"
        if name in ("cot_binary", "cot_score"):
            return 1
        if name == "tournament":
            return math.ceil(math.log2(k)) if k > 1 else 0
        if name == "all_of":
            return sum(verify_steps(m) for m in (v.get("verifiers") or {}).values())
        return 0  # none, mc (log-likelihoods: no generate call)

    out = {"passes": passes, "bait": passes * (1 + attempts), "answers": 1,
           "reflect": 1 if cfg.voting.get("reflect", False) else 0, "verify": verify_steps(cfg.get("verify"))}
    out["total"] = out["bait"] + out["answers"] + out["reflect"] + out["verify"]
    return out


def _raw_path(workdir: Path, r: int) -> Path:
    return workdir / "raw" / f"round_{r:05d}.json"


def sample_raw_rounds(cfg: DictConfig, workdir: Path, rounds: list[int], get_backend: Callable[[], Backend],
                      shard: tuple[int, int] | None = None) -> None:
    """The raw bait samples of `rounds` (independent units: any process, any order, any split)."""
    from crescent.synth.sources import round_prompts

    per_round, max_calls = int(cfg.questions.calls_per_round), int(cfg.questions.max_calls)
    mult = len(cfg.questions.augment_prompts) if cfg.questions.get("source", "bait") == "seed_augment" else 1
    params = decoding(cfg.sampling.question)
    (workdir / "raw").mkdir(parents=True, exist_ok=True)
    units, metas = [], []
    for r in rounds:
        n_calls = min(per_round, max_calls - r * per_round)
        prompts, meta = round_prompts(cfg, r, n_calls)
        units.append(Unit(_raw_path(workdir, r), prompts, derive_seed(cfg.seed, "bait", r), r * per_round * mult))
        metas.append((r, n_calls, meta))

    def record(u: int, outs: list, seconds: float) -> dict:
        r, n_calls, meta = metas[u]
        raw = [{"id": f"q{r:05d}-{c:03d}-{s:03d}", "text": t, **meta[c]}
               for c, samples in enumerate(outs) for s, t in enumerate(samples)]
        return {"round": r, "calls": n_calls, "raw": raw, "seconds": seconds}

    run_units(units, params, int(cfg.seed), ("bait",), get_backend, record, shard)


def dedup_pass(cfg: DictConfig, workdir: Path, pass_idx: int, rounds: list[int], get_backend, embed, index) -> dict:
    """Clean + dedup (rewrites of all duplicates of the pass in one call per attempt) over the pass's raw rounds,
    in round order: accept-in-order against everything accepted before. Returns (record, embeddings)."""
    from crescent.synth.dedup import dedup_with_rewrites

    t0 = time.perf_counter()
    raws = [read_json(_raw_path(workdir, r)) for r in rounds]
    raw = [row for rr in raws for row in rr["raw"]]
    clean = _cleaner(cfg)
    ids, texts, rejected = [], [], []
    for r in raw:
        question, reason = clean(r["text"])
        if question is None:
            rejected.append({"id": r["id"], "text": r["text"], "reason": reason, "stage": "clean"})
        else:
            ids.append(r["id"])
            texts.append(question)
    record = {"round": pass_idx, "rounds": list(rounds), "calls": sum(rr["calls"] for rr in raws), "raw": raw,
              "rejections": rejected, "rewrites": 0}
    if cfg.dedup.name == "none":
        record["accepted"] = [{"id": i, "text": t, "origin_id": i, "attempt": 0} for i, t in zip(ids, texts)]
        embeddings = None
    else:
        out = dedup_with_rewrites(ids, texts, index, embed, _rewriter(cfg, get_backend, pass_idx),
                                  threshold=float(cfg.dedup.threshold), max_attempts=int(cfg.dedup.max_attempts),
                                  clean=clean)
        record["accepted"] = [{"id": a.id, "text": a.text, "origin_id": a.origin_id, "attempt": a.attempt}
                              for a in out.accepted]
        record["rejections"] += [_rejection_row(r) for r in out.rejections]
        record["rewrites"] = out.rewrites
        embeddings = out.embeddings
    record["seconds"] = round(time.perf_counter() - t0 + sum(rr["seconds"] for rr in raws), 3)
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


def _load_round(json_path: Path, npy_path: Path, with_embeddings: bool) -> tuple[dict, np.ndarray | None] | None:
    """A finished pass's (record, embeddings of its accepted questions), or None: not done yet, or damaged (a
    record that does not read back as an object, an embeddings file that is torn or has another row count).
    Damaged files are removed with a warning naming them: the pass is done again (same seeds, same rows)."""
    if not json_path.exists():
        return None
    try:
        record = read_json(json_path, expect=dict, fix="removing it: the pass is done again")
        embeddings = None
        if with_embeddings and record["accepted"]:
            try:
                embeddings = np.load(npy_path)
            except (OSError, ValueError, EOFError) as err:  # missing, torn ("EOF: reading array header"), garbled
                raise DamagedFileError(f"{npy_path} is damaged: expected the float32 embeddings of the pass's "
                                       f"{len(record['accepted'])} accepted questions, could not read them ({err}); "
                                       "removing it and its record: the pass is done again") from err
            if embeddings.ndim != 2 or len(embeddings) != len(record["accepted"]):
                raise DamagedFileError(f"{npy_path} is damaged: expected {len(record['accepted'])} embedding rows, "
                                       f"got shape {embeddings.shape}; removing it and its record: the pass is done "
                                       "again")
        return record, embeddings
    except (DamagedFileError, KeyError, TypeError) as err:
        log.warning("%s", err if isinstance(err, DamagedFileError) else f"{json_path} is damaged ({err!r}): "
                    "removing it: the pass is done again")
        json_path.unlink(missing_ok=True)
        npy_path.unlink(missing_ok=True)
        return None


def generate_questions(cfg: DictConfig, workdir: Path, get_backend: Callable[[], Backend],
                       get_embed: Callable[[], Callable], shard: tuple[int, int] | None = None,
                       sample: Callable | None = None) -> tuple[list[dict], list[dict]]:
    """Bait passes until num_questions are accepted or the call budget is spent.

    A pass = questions.rounds_per_pass bait rounds: their raw samples are independent units (sampled in one engine
    call on vLLM, by D worker processes or shards on CPU: `sample(rounds)`), then cleaned and deduplicated in
    round order with rewrites (one call per attempt for the whole pass), by one process under the pass's lock.
    Finished passes are replayed from disk (resume); the accepted list is truncated to num_questions.
    Returns (accepted questions in order, pass records). questions.source=dataset reads them instead.
    """
    from crescent.synth.dedup import DedupIndex

    if cfg.questions.get("source", "bait") == "dataset":
        return dataset_round(cfg, workdir, get_embed)

    (workdir / "rounds").mkdir(parents=True, exist_ok=True)
    target = cfg.sampling.num_questions
    per_round = int(cfg.questions.calls_per_round)
    max_calls = int(cfg.questions.max_calls)
    n_rounds = math.ceil(max_calls / per_round)
    per_pass = rounds_per_pass(cfg, n_rounds)
    n_passes = math.ceil(n_rounds / per_pass)
    sample = sample or (lambda rounds: sample_raw_rounds(cfg, workdir, rounds, get_backend, shard))
    index = None
    if cfg.dedup.name != "none":
        index = DedupIndex(384, backend=cfg.dedup.index, exact_max=int(cfg.dedup.exact_max))
    accepted: list[dict] = []
    records: list[dict] = []
    bar = tqdm(total=target or n_passes, desc="questions" if target else "bait passes", unit="q" if target else "pass")
    for p in range(n_passes):
        if target and len(accepted) >= target:
            break
        json_path, npy_path = _round_paths(workdir, p)
        added = False
        loaded = _load_round(json_path, npy_path, index is not None)
        if loaded is None:
            sample(list(range(p * per_pass, min((p + 1) * per_pass, n_rounds))))
            with UnitLock(json_path):  # one process dedups a pass; the others then read its record
                loaded = _load_round(json_path, npy_path, index is not None)
                if loaded is None:
                    rounds = list(range(p * per_pass, min((p + 1) * per_pass, n_rounds)))
                    record, embeddings = dedup_pass(cfg, workdir, p, rounds, get_backend,
                                                    get_embed() if index is not None else None, index)
                    _save_round(workdir, record, embeddings)
                    added = True  # already in the index
        if not added:
            record, embeddings = loaded
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
