"""Stage: majority vote over the k answers, and chat SFT rows from the winners."""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from crescent.synth.formats import format_messages
from crescent.answers import answers_equal, majority_vote
from crescent.utils.seeding import derive_seed


def build_sft_rows(answered: list[dict], tie: str, min_agreement: float, seed: int, keep: str = "first",
                   formats: Sequence[str] = ("chat",), exemplars: Sequence[Any] = ()) -> tuple[list[dict], dict]:
    """Vote each question; keep those with a majority at >= min_agreement.

    keep=first: the assistant turn is the first sampled response whose answer equals the majority;
    keep=all_agreeing (LMSI): every such response. Each kept response gives one row per format
    (crescent.synth.formats). Returns (rows, counts) where counts says why questions were dropped.
    """
    rows, counts = [], Counter()
    for item in answered:
        answers = item["answers"]
        counts["answers"] += len(answers)
        counts["unparseable_answers"] += sum(a is None for a in answers)
        vote = majority_vote(answers, tie=tie, seed=derive_seed(seed, "tie", item["id"]))
        if vote.answer is None:
            counts[f"dropped_{vote.reason}"] += 1
            continue
        if vote.agreement < min_agreement:
            counts["dropped_below_min_agreement"] += 1
            continue
        agreeing = [i for i, a in enumerate(answers) if answers_equal(a, vote.answer)]
        responses, majority = list(item["responses"]), vote.answer
        reflection = item.get("reflection")
        if reflection and reflection.get("outcome") == "revised":  # the model corrected its majority answer
            responses.append(reflection["text"])
            agreeing, majority = [len(responses) - 1], reflection["answer"]
        counts["kept_questions"] += 1
        for chosen in agreeing if keep == "all_agreeing" else agreeing[:1]:
            counts["kept_responses"] += 1
            for fmt in formats:
                suffix = "" if keep == "first" and len(formats) == 1 else f"-r{chosen}" + (
                    "" if len(formats) == 1 else f"-{fmt}")
                rows.append({
                    "id": item["id"] + suffix,
                    "messages": format_messages(fmt, item["question"], responses[chosen], majority, exemplars),
                    "question": item["question"],
                    "answer": majority,
                    "votes": answers,
                    "count": vote.count,
                    "k": vote.k,
                    "agreement": vote.agreement,
                    "response_index": chosen,
                    "format": fmt,
                    **({"reflection": reflection["outcome"]} if reflection else {}),
                })
    counts["kept"] = len(rows)
    return rows, dict(counts)
