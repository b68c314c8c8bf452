"""Training formats of a kept (question, response, answer): plain chat (Crescent) or LMSI's four."""
from __future__ import annotations

from typing import Any, Sequence

from crescent.config.choices import FORMATS

ZERO_SHOT_COT = "Let's think step by step."


def _exemplar_text(exemplars: Sequence[Any], with_cot: bool) -> str:
    return "".join(f"Q: {e['question']}\nA: {e['cot'] if with_cot else 'The answer is ' + str(e['answer']) + '.'}\n\n"
                   for e in exemplars)


def format_messages(fmt: str, question: str, response: str, answer: str, exemplars: Sequence[Any] = ()) -> list[dict]:
    """One conversation in format `fmt`:
    chat             user: question                       assistant: response
    cot_fewshot      user: CoT exemplars + Q: question A:  assistant: response (its reasoning)
    direct_fewshot   user: answer-only exemplars + Q: … A: assistant: The answer is N.
    cot_zeroshot     user: Q: … A: Let's think step by step.  assistant: response
    direct_zeroshot  user: Q: … A:                        assistant: The answer is N.
    """
    direct = f"The answer is {answer}."
    if fmt == "chat":
        user, reply = question, response
    elif fmt == "cot_fewshot":
        user, reply = f"{_exemplar_text(exemplars, True)}Q: {question}\nA:", response.strip()
    elif fmt == "direct_fewshot":
        user, reply = f"{_exemplar_text(exemplars, False)}Q: {question}\nA:", direct
    elif fmt == "cot_zeroshot":
        user, reply = f"Q: {question}\nA: {ZERO_SHOT_COT}", response.strip()
    elif fmt == "direct_zeroshot":
        user, reply = f"Q: {question}\nA:", direct
    else:
        raise ValueError(f"unknown training format {fmt!r}; allowed: {list(FORMATS)}")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
