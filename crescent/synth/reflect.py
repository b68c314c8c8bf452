"""Optional reflection pass (voting.reflect=true): the model re-checks each question's majority
response and may revise it. Outcomes are counted: confirmed, revised, invalid (no readable answer:
the original is kept)."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig
from tqdm.auto import tqdm

from crescent.backends.base import Backend
from crescent.synth.prompts import fill, user_chat
from crescent.synth.questions import decoding
from crescent.synth.voting import answers_equal, extract_answer, majority_vote
from crescent.utils.io import read_json, write_json
from crescent.utils.seeding import derive_seed


def outcome(majority: str, reflected: str | None) -> str:
    if reflected is None:
        return "invalid"
    return "confirmed" if answers_equal(reflected, majority) else "revised"


def _chunk(cfg: DictConfig, backend: Backend, items: list[dict], chunk_idx: int) -> dict:
    t0 = time.perf_counter()
    params = decoding(cfg.sampling.answer, n=1)
    prompts = [user_chat(fill(cfg.voting.reflect_prompt, question=i["question"], response=i["response"])) for i in items]
    outs = backend.generate(prompts, params, seed=derive_seed(cfg.seed, "reflect", chunk_idx))
    rows = [{"id": i["id"], "text": o[0], "answer": extract_answer(o[0]), "majority": i["majority"]}
            for i, o in zip(items, outs)]
    return {"chunk": chunk_idx, "rows": rows, "seconds": round(time.perf_counter() - t0, 3)}


def reflect(cfg: DictConfig, workdir: Path, answered: list[dict], get_backend: Callable[[], Backend]) -> tuple[list[dict], dict]:
    """Adds item["reflection"] = {text, answer, outcome} to every question with a majority; resumable chunks."""
    todo = []
    for item in answered:
        vote = majority_vote(item["answers"], tie=cfg.voting.tie, seed=derive_seed(cfg.seed, "tie", item["id"]))
        if vote.answer is not None:
            first = next(i for i, a in enumerate(item["answers"]) if answers_equal(a, vote.answer))
            todo.append({"id": item["id"], "question": item["question"], "response": item["responses"][first],
                         "majority": vote.answer})
    size = int(cfg.sampling.answer_chunk)
    (workdir / "reflect").mkdir(parents=True, exist_ok=True)
    by_id, counts = {}, Counter()
    for c, lo in enumerate(tqdm(range(0, len(todo), size), desc="reflection", unit="chunk")):
        path = workdir / "reflect" / f"chunk_{c:05d}.json"
        record = read_json(path) if path.exists() else None
        if record is None:
            record = _chunk(cfg, get_backend(), todo[lo:lo + size], c)
            write_json(path, record)
        for r in record["rows"]:
            r["outcome"] = outcome(r["majority"], r["answer"])
            counts[f"reflect_{r['outcome']}"] += 1
            by_id[r["id"]] = r
    return [{**item, "reflection": by_id[item["id"]]} if item["id"] in by_id else item for item in answered], dict(counts)
