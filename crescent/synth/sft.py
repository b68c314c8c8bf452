"""Stage: majority vote over the k answers, and chat SFT rows from the winners."""
from __future__ import annotations

from collections import Counter

from crescent.synth.voting import answers_equal, majority_vote
from crescent.utils.seeding import derive_seed


def build_sft_rows(answered: list[dict], tie: str, min_agreement: float, seed: int) -> tuple[list[dict], dict]:
    """Vote each question; keep those with a majority at >= min_agreement.

    The assistant turn is the first sampled response whose answer equals the majority.
    Returns (rows, counts) where counts says why questions were dropped.
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
        chosen = next(i for i, a in enumerate(answers) if answers_equal(a, vote.answer))
        rows.append({
            "id": item["id"],
            "messages": [{"role": "user", "content": item["question"]},
                         {"role": "assistant", "content": item["responses"][chosen]}],
            "question": item["question"],
            "answer": vote.answer,
            "votes": answers,
            "count": vote.count,
            "k": vote.k,
            "agreement": vote.agreement,
            "response_index": chosen,
        })
    counts["kept"] = len(rows)
    return rows, dict(counts)
