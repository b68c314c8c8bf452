"""Optional reflection pass (voting.reflect=true): the model re-checks each question's majority
response and may revise it. Outcomes are counted: confirmed, revised, invalid (no readable answer:
the original is kept)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from crescent.backends.base import Backend
from crescent.backends.units import Unit, run_units
from crescent.synth.prompts import fill, user_chat
from crescent.synth.questions import decoding
from crescent.answers import answers_equal, extract_answer, majority_vote
from crescent.utils.io import read_json
from crescent.utils.seeding import derive_seed


def outcome(majority: str, reflected: str | None) -> str:
    if reflected is None:
        return "invalid"
    return "confirmed" if answers_equal(reflected, majority) else "revised"


def reflect(cfg: DictConfig, workdir: Path, answered: list[dict], get_backend: Callable[[], Backend],
            shard: tuple[int, int] | None = None) -> tuple[list[dict], dict]:
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
    params = decoding(cfg.sampling.answer, n=1)
    chunks = [todo[lo:lo + size] for lo in range(0, len(todo), size)]
    units = [Unit(workdir / "reflect" / f"chunk_{c:05d}.json",
                  [user_chat(fill(cfg.voting.reflect_prompt, question=i["question"], response=i["response"]))
                   for i in items], derive_seed(cfg.seed, "reflect", c), c * size) for c, items in enumerate(chunks)]

    def record(c: int, outs: list, seconds: float) -> dict:
        rows = [{"id": i["id"], "text": o[0], "answer": extract_answer(o[0]), "majority": i["majority"]}
                for i, o in zip(chunks[c], outs)]
        return {"chunk": c, "rows": rows, "seconds": seconds}

    # one engine call for the whole stage on vLLM (a seed per request), one per chunk on hf/fast
    run_units(units, params, int(cfg.seed), ("reflect",), get_backend, record, shard)
    by_id, counts = {}, Counter()
    for unit in units:
        for r in read_json(unit.path)["rows"]:
            r["outcome"] = outcome(r["majority"], r["answer"])
            counts[f"reflect_{r['outcome']}"] += 1
            by_id[r["id"]] = r
    return [{**item, "reflection": by_id[item["id"]]} if item["id"] in by_id else item for item in answered], dict(counts)
