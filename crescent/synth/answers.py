"""Stage: k sampled answers per question, in resumable chunks, with extracted final answers."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig
from tqdm.auto import tqdm

from crescent.backends.base import Backend
from crescent.synth.questions import decoding
from crescent.synth.voting import extract_answer
from crescent.utils.io import read_json, write_json
from crescent.utils.seeding import derive_seed


def answer_chunk(cfg: DictConfig, backend: Backend, questions: list[dict], chunk_idx: int) -> dict:
    t0 = time.perf_counter()
    from dataclasses import replace

    from crescent.synth.sources import answer_prompt

    params = decoding(cfg.sampling.answer, n=int(cfg.voting.k))
    params = replace(params, stop=tuple(cfg.questions.get("answer_stop") or ()))
    prompts = [answer_prompt(cfg.questions, q["text"]) for q in questions]
    outs = backend.generate(prompts, params, seed=derive_seed(cfg.seed, "answer", chunk_idx))
    rows = [{"id": q["id"], "question": q["text"], "responses": resp, "answers": [extract_answer(r) for r in resp]}
            for q, resp in zip(questions, outs)]
    return {"chunk": chunk_idx, "rows": rows, "seconds": round(time.perf_counter() - t0, 3)}


def answer_questions(cfg: DictConfig, workdir: Path, questions: list[dict],
                     get_backend: Callable[[], Backend]) -> list[dict]:
    """k answers for every question; finished chunks are read back from disk (resume)."""
    size = int(cfg.sampling.answer_chunk)
    chunks = [questions[i:i + size] for i in range(0, len(questions), size)]
    (workdir / "answers").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with tqdm(total=len(questions), desc=f"answers (k={cfg.voting.k})", unit="q") as bar:
        for c, chunk in enumerate(chunks):
            path = workdir / "answers" / f"chunk_{c:05d}.json"
            if path.exists():
                record = read_json(path)
            else:
                record = answer_chunk(cfg, get_backend(), chunk, c)
                write_json(path, record)
            if [r["id"] for r in record["rows"]] != [q["id"] for q in chunk]:
                raise RuntimeError(f"{path} does not match the question list; delete {workdir} to regenerate")
            rows += record["rows"]
            bar.update(len(chunk))
    return rows
