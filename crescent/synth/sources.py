"""Where questions come from: the bait prompt (Crescent), an unlabeled dataset (LMSI), or rewrites
of seed questions (seed augmentation). Seed/dataset answers are never read."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from crescent.config.choices import QUESTION_SOURCES
from crescent.synth.prompts import fill, user_chat

SOURCES = QUESTION_SOURCES
DATASET_LOADERS = ("gsm8k_train", "file")


def dataset_questions(qcfg: DictConfig, base_dir: str = ".") -> list[str]:
    """The question texts of questions.dataset (only `question_field` is read), from `offset` on."""
    from crescent.data.benchmarks import gsm8k, load_docs

    ds = qcfg.dataset
    if ds.loader == "gsm8k_train":
        rows = gsm8k()["fewshot"]
    elif ds.loader == "file":
        rows = load_docs({"loader": "file", "path": ds.path}, base_dir)["test"]
    else:
        raise ValueError(f"questions.dataset.loader={ds.loader!r}; allowed: {list(DATASET_LOADERS)}")
    field = ds.question_field
    missing = [i for i, r in enumerate(rows[:50]) if field not in r]
    if missing:
        raise ValueError(f"questions.dataset.question_field={field!r} is not a field of row {missing[0]} "
                         f"(fields: {sorted(rows[missing[0]])})")
    return [str(r[field]).strip() for r in rows[int(ds.get("offset", 0)):]]


def bait_prompt(qcfg: DictConfig, base_dir: str = ".") -> str:
    """The bait prompt; {seed_questions} (LMSI's self-generated questions) is filled with seed_count rows."""
    if "{seed_questions}" not in qcfg.prompt:
        return qcfg.prompt
    seeds = dataset_questions(qcfg, base_dir)[: int(qcfg.seed_count)]
    return fill(qcfg.prompt, seed_questions="\n".join(f"{i + 1}. {q}" for i, q in enumerate(seeds)))


def round_prompts(cfg: DictConfig, round_idx: int, n_calls: int, base_dir: str = ".") -> tuple[list, list[dict]]:
    """(prompts, meta) of one question round: n_calls bait calls, or n_calls seed questions x styles."""
    q = cfg.questions
    source = q.get("source", "bait")
    if source == "bait":
        return [user_chat(bait_prompt(q, base_dir))] * n_calls, [{} for _ in range(n_calls)]
    if source == "seed_augment":
        first = round_idx * int(q.calls_per_round)
        seeds = dataset_questions(q, base_dir)[first:first + n_calls]
        prompts, meta = [], []
        for i, seed in enumerate(seeds):
            for style, template in q.augment_prompts.items():
                prompts.append(user_chat(fill(template, question=seed)))
                meta.append({"seed_index": first + i, "style": style})
        return prompts, meta
    raise ValueError(f"questions.source={source!r} has no rounds; allowed: {list(SOURCES)}")


def answer_prompt(qcfg: DictConfig, question: str) -> Any:
    """The answer prompt of one question: a chat user turn, or a raw completion prompt (few-shot CoT)."""
    exemplars = "".join(f"Q: {e.question}\nA: {e.cot}\n\n" for e in qcfg.get("exemplars") or [])
    text = fill(qcfg.answer_prompt, question=question, exemplars=exemplars)
    return text if qcfg.get("answer_format", "chat") == "completion" else user_chat(text)
