"""Benchmark documents -> sampling prompts and gold answers for the gap stage (pure).

A benchmark config is the eval one (conf/eval/benchmark/*.yaml): `question_template` (Jinja over the
document), `answer_field` or `target`, `until`. Few-shot prompts are lm-eval's layout: exemplars
"<question_template> <target>" joined by blank lines, then the question ("Question: ...\nAnswer:" for
GSM8K, exemplars drawn from GSM8K train); chat=true puts them in alternating user/assistant turns.
"""
from __future__ import annotations

import math
import random
from typing import Any, Mapping, Sequence

from crescent.backends.base import Prompt
from crescent.synth.voting import extract_answer
from crescent.utils import templates
from crescent.utils.seeding import derive_seed


def render(source: str, doc: Mapping[str, Any]) -> str:
    """A benchmark template over a document, in Jinja's sandbox (crescent.utils.templates)."""
    return templates.render(source, doc)


def target_text(doc: Mapping[str, Any], bench: Mapping[str, Any]) -> str:
    """The reference answer text (a GSM8K solution ends with '#### N')."""
    if bench.get("target") is not None:
        return render(str(bench["target"]), doc)
    return str(doc[bench["answer_field"]])


def gold_answer(doc: Mapping[str, Any], bench: Mapping[str, Any]) -> str | None:
    """The canonical gold number: the text after the last '####' (else the whole target), extracted."""
    return extract_answer(target_text(doc, bench).split("####")[-1])


def question_text(doc: Mapping[str, Any], bench: Mapping[str, Any], field: str | None) -> str:
    """The bare question shown to the verifier: doc[field], or the rendered question_template."""
    return str(doc[field]) if field else render(str(bench["question_template"]), doc).strip()


def limit_docs(docs: Sequence[dict], limit: int | float | None) -> list[dict]:
    """The first `limit` documents (an int), the first ceil(limit * len) (a fraction), or all (None)."""
    if limit is None:
        return list(docs)
    n = math.ceil(limit * len(docs)) if isinstance(limit, float) else int(limit)
    return list(docs[:n])


def exemplars(pool: Sequence[dict], k: int, seed: int, index: int, exclude: dict | None = None) -> list[dict]:
    """k few-shot documents for question `index`, drawn without replacement with a derived seed."""
    drawn = random.Random(derive_seed(seed, "gap_fewshot", index)).sample(list(pool), min(k + 1, len(pool)))
    return [d for d in drawn if d is not exclude][:k]


def build_prompt(doc: Mapping[str, Any], shots: Sequence[Mapping[str, Any]], bench: Mapping[str, Any],
                 chat: bool = False) -> Prompt:
    template = str(bench["question_template"])
    if chat:
        messages: list[dict] = []
        for s in shots:
            messages += [{"role": "user", "content": render(template, s)},
                         {"role": "assistant", "content": target_text(s, bench)}]
        return messages + [{"role": "user", "content": render(template, doc)}]
    parts = [f"{render(template, s)} {target_text(s, bench)}" for s in shots]
    return "\n\n".join(parts + [render(template, doc)])
