"""Stage: k sampled answers per question, in resumable chunks, with extracted final answers.

Chunks are the units of work (crescent.backends.units): on vLLM all missing chunks go to the engine in one call, a
seed per question (its k samples: disjoint streams); on hf/fast one call per chunk with the chunk's seed."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig
from tqdm.auto import tqdm

from crescent.backends.base import Backend
from crescent.backends.units import Unit, run_units
from crescent.synth.questions import decoding
from crescent.answers import extract_answer
from crescent.utils.io import read_json
from crescent.utils.seeding import derive_seed


def _chunks(cfg: DictConfig, questions: list[dict]) -> list[list[dict]]:
    size = int(cfg.sampling.answer_chunk)
    return [questions[i:i + size] for i in range(0, len(questions), size)]


def sample_answers(cfg: DictConfig, workdir: Path, questions: list[dict], get_backend: Callable[[], Backend],
                   shard: tuple[int, int] | None = None) -> None:
    """Write every missing answer chunk (any process, any split: the rows do not depend on it)."""
    from crescent.synth.sources import answer_prompt

    size = int(cfg.sampling.answer_chunk)
    chunks = _chunks(cfg, questions)
    (workdir / "answers").mkdir(parents=True, exist_ok=True)
    params = replace(decoding(cfg.sampling.answer, n=int(cfg.voting.k)),
                     stop=tuple(cfg.questions.get("answer_stop") or ()))
    units = [Unit(workdir / "answers" / f"chunk_{c:05d}.json", [answer_prompt(cfg.questions, q["text"]) for q in chunk],
                  derive_seed(cfg.seed, "answer", c), c * size) for c, chunk in enumerate(chunks)]

    def record(c: int, outs: list, seconds: float) -> dict:
        rows = [{"id": q["id"], "question": q["text"], "responses": resp, "answers": [extract_answer(r) for r in resp]}
                for q, resp in zip(chunks[c], outs)]
        return {"chunk": c, "rows": rows, "seconds": seconds}

    with tqdm(total=len(units), desc=f"answers (k={cfg.voting.k})", unit="chunk") as bar:
        run_units(units, params, int(cfg.seed), ("answer",), get_backend, record, shard, on_done=lambda u: bar.update())


def answer_questions(cfg: DictConfig, workdir: Path, questions: list[dict], get_backend: Callable[[], Backend],
                     shard: tuple[int, int] | None = None, sample: Callable | None = None) -> list[dict]:
    """k answers for every question; finished chunks are read back from disk (resume)."""
    (sample or (lambda: sample_answers(cfg, workdir, questions, get_backend, shard)))()
    rows: list[dict] = []
    for c, chunk in enumerate(_chunks(cfg, questions)):
        path = workdir / "answers" / f"chunk_{c:05d}.json"
        record = read_json(path)
        if [r["id"] for r in record["rows"]] != [q["id"] for q in chunk]:
            raise RuntimeError(f"{path} does not match the question list; delete {workdir} to regenerate")
        rows += record["rows"]
    return rows
