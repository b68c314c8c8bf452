"""Stage: k sampled answers per question, in resumable chunks, with extracted final answers.

Chunks are the units of work (crescent.backends.units): on vLLM all missing chunks go to the engine in one call, a
seed per question (its k samples: disjoint streams); on hf/fast one call per chunk with the chunk's seed. With
sampling.nested_k=true a unit is (chunk, sample j), so the answers of k=3 are the first 3 of k=8 (sample_answers)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig
from tqdm.auto import tqdm

from crescent.backends.base import Backend
from crescent.backends.units import Unit, run_units
from crescent.synth.keys import nested_k
from crescent.synth.questions import decoding
from crescent.answers import extract_answer
from crescent.utils.io import read_json
from crescent.utils.seeding import derive_seed


def _chunks(cfg: DictConfig, questions: list[dict]) -> list[list[dict]]:
    size = int(cfg.sampling.answer_chunk)
    return [questions[i:i + size] for i in range(0, len(questions), size)]


def answer_units(cfg: DictConfig, workdir: Path, questions: list[dict]) -> list[Unit]:
    """The answer stage's units: one per chunk (k samples per question, n=k), or with sampling.nested_k=true one per
    (chunk, sample j) with n=1 and a stream that does not depend on k (see sample_answers)."""
    from crescent.synth.sources import answer_prompt

    size = int(cfg.sampling.answer_chunk)
    chunks = _chunks(cfg, questions)
    prompts = [[answer_prompt(cfg.questions, q["text"]) for q in chunk] for chunk in chunks]
    if not nested_k(cfg):
        return [Unit(workdir / "answers" / f"chunk_{c:05d}.json", prompts[c], derive_seed(cfg.seed, "answer", c),
                     c * size) for c in range(len(chunks))]
    total = len(questions)
    return [Unit(workdir / "answers" / f"chunk_{c:05d}_s{j:03d}.json", prompts[c],
                 derive_seed(cfg.seed, "answer_sample", c, j), j * total + c * size)
            for j in range(int(cfg.voting.k)) for c in range(len(chunks))]


def sample_answers(cfg: DictConfig, workdir: Path, questions: list[dict], get_backend: Callable[[], Backend],
                   shard: tuple[int, int] | None = None) -> None:
    """Write every missing answer unit (any process, any split: the rows do not depend on it).

    sampling.nested_k=true: sample j of question i is drawn alone (n=1) from its own stream -- on vLLM the request
    seed of stream j * Q + i of stage ("answer_sample",) (Q questions), on hf/fast the seed of unit (chunk, j) --
    so the k answers of a smaller k are the first k samples of a larger k, and a k sweep reads the samples it shares
    from the same unit files. Off (the default), one unit draws all k samples of a chunk (n=k): streams depend on k."""
    chunks = _chunks(cfg, questions)
    (workdir / "answers").mkdir(parents=True, exist_ok=True)
    nested = nested_k(cfg)
    params = replace(decoding(cfg.sampling.answer, n=1 if nested else int(cfg.voting.k)),
                     stop=tuple(cfg.questions.get("answer_stop") or ()))
    units = answer_units(cfg, workdir, questions)

    def record(u: int, outs: list, seconds: float) -> dict:
        c = u % len(chunks) if nested else u
        rows = [{"id": q["id"], "question": q["text"], "responses": resp, "answers": [extract_answer(r) for r in resp]}
                for q, resp in zip(chunks[c], outs)]
        out = {"chunk": c, "rows": rows, "seconds": seconds}
        return {**out, "sample": u // len(chunks)} if nested else out

    stage = ("answer_sample",) if nested else ("answer",)
    with tqdm(total=len(units), desc=f"answers (k={cfg.voting.k})", unit="unit" if nested else "chunk") as bar:
        run_units(units, params, int(cfg.seed), stage, get_backend, record, shard, on_done=lambda u: bar.update())


def answer_questions(cfg: DictConfig, workdir: Path, questions: list[dict], get_backend: Callable[[], Backend],
                     shard: tuple[int, int] | None = None, sample: Callable | None = None) -> list[dict]:
    """k answers for every question; finished units are read back from disk (resume, and nested-k reuse)."""
    (sample or (lambda: sample_answers(cfg, workdir, questions, get_backend, shard)))()
    chunks = _chunks(cfg, questions)
    units = answer_units(cfg, workdir, questions)
    per_chunk = len(units) // max(len(chunks), 1)  # 1, or k units per chunk (nested_k: sample-major)
    rows: list[dict] = []
    for c, chunk in enumerate(chunks):
        records = [read_json(units[j * len(chunks) + c].path) for j in range(per_chunk)]
        for record, unit in zip(records, (units[j * len(chunks) + c] for j in range(per_chunk))):
            if [r["id"] for r in record["rows"]] != [q["id"] for q in chunk]:
                raise RuntimeError(f"{unit.path} does not match the question list; delete {workdir} to regenerate")
        for i in range(len(chunk)):
            row = dict(records[0]["rows"][i])
            row["responses"] = [r for rec in records for r in rec["rows"][i]["responses"]]
            row["answers"] = [a for rec in records for a in rec["rows"][i]["answers"]]
            rows.append(row)
    return rows


def answer_seconds(cfg: DictConfig, workdir: Path, questions: list[dict]) -> float:
    """Engine seconds recorded by this config's answer units."""
    return sum(read_json(u.path)["seconds"] for u in answer_units(cfg, workdir, questions))
