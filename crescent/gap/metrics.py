"""Generation-verification gap metrics (Mind the Gap, Song et al. 2024) from per-sample correctness (pure).

Per question x with n samples, c correct:  J(x) = c / n;  J_f(x) = accuracy of the kept samples.
- acc_all J = mean_x J(x) (all questions; = accuracy of all samples when n is the same for every x).
- acc_filtered J_f = mean_x J_f(x) over the included questions Q_f. A question with nothing kept:
  empty_keep_policy=unchanged (default) counts J_f(x) = J(x) (the filter left it as it was: no gain, no
  loss); =exclude leaves it out of Q_f.
- gap = mean_{Q_f} (J_f(x) - J(x)) = J_f - acc_all_included (= J_f - J when nothing is excluded).
- relative_gap = mean over Q_f of (J_f(x) - J(x)) / (1 - J(x)). J(x) = 1 has no room to improve:
  perfect_question_policy=exclude (default) leaves it out, =zero counts it as 0. None when no question counts.
- pass@k = mean_x 1 - C(n - c, k) / C(n, k) (unbiased, Chen et al. 2021); None when k > n.
- maj@k = mean_x [majority answer of the first k samples == gold] (ties: the answer seen first);
  majority_gain = maj@n - acc_all.
"""
from __future__ import annotations

from math import comb
from typing import Sequence

from crescent.answers import answers_equal, majority_vote
from crescent.config.choices import EMPTY_POLICIES, PERFECT_POLICIES


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def pass_at_k(n: int, c: int, k: int) -> float | None:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if k > n or n < 1:
        return None
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def maj_correct(answers: Sequence[str | None], gold: str | None, k: int) -> bool | None:
    """Whether the majority vote of the first k answers equals gold; None when k > len(answers)."""
    if k > len(answers):
        return None
    return answers_equal(majority_vote(answers[:k], tie="first").answer, gold)


def question_terms(correct: Sequence[bool], kept: Sequence[bool], perfect_policy: str = "exclude") -> dict:
    """One question's J, J_f (None when nothing kept) and relative-gap term (None when not counted)."""
    n = len(correct)
    j = sum(correct) / n if n else 0.0
    k = sum(kept)
    jf = sum(c for c, keep in zip(correct, kept) if keep) / k if k else None
    rel = None
    if jf is not None:
        if j < 1.0:
            rel = (jf - j) / (1.0 - j)
        elif perfect_policy == "zero":
            rel = 0.0
    return {"n": n, "correct": int(sum(correct)), "kept": int(k), "J": j, "J_f": jf, "relative": rel}


def gap_metrics(correct: Sequence[Sequence[bool]], kept: Sequence[Sequence[bool]],
                perfect_policy: str = "exclude", empty_policy: str = "unchanged") -> dict:
    """The gap metrics over questions (see the module docstring); `per_question` holds each question's terms."""
    if perfect_policy not in PERFECT_POLICIES:
        raise ValueError(f"perfect_question_policy={perfect_policy!r}; allowed: {list(PERFECT_POLICIES)}")
    if empty_policy not in EMPTY_POLICIES:
        raise ValueError(f"empty_keep_policy={empty_policy!r}; allowed: {list(EMPTY_POLICIES)}")
    per_q = []
    for c, k in zip(correct, kept):
        t = question_terms(c, k, perfect_policy)
        if t["J_f"] is None and empty_policy == "unchanged":  # nothing kept: counted as unchanged
            t["J_f"] = t["J"]
            t["relative"] = 0.0 if (t["J"] < 1.0 or perfect_policy == "zero") else None
        per_q.append(t)
    included = [t for t in per_q if t["J_f"] is not None]
    rel = [t["relative"] for t in included if t["relative"] is not None]
    acc_f, acc_inc = _mean([t["J_f"] for t in included]), _mean([t["J"] for t in included])
    total_kept = sum(t["kept"] for t in per_q)
    kept_correct = sum(c for cs, ks in zip(correct, kept) for c, keep in zip(cs, ks) if keep)
    samples = sum(t["n"] for t in per_q)
    return {
        "questions": len(per_q),
        "questions_included": len(included),
        "acc_all": _mean([t["J"] for t in per_q]),
        "acc_all_included": acc_inc,
        "acc_filtered": acc_f,
        "gap": None if acc_f is None else acc_f - acc_inc,
        "relative_gap": _mean(rel),
        "relative_gap_questions": len(rel),
        "acc_filtered_pooled": kept_correct / total_kept if total_kept else None,
        "kept_fraction": total_kept / samples if samples else None,
        "questions_nothing_kept": sum(t["kept"] == 0 for t in per_q),
        "questions_all_correct": sum(t["n"] > 0 and t["correct"] == t["n"] for t in per_q),
        "questions_none_correct": sum(t["correct"] == 0 for t in per_q),
        "per_question": per_q,
    }


def sample_metrics(correct: Sequence[Sequence[bool]], answers: Sequence[Sequence[str | None]],
                   golds: Sequence[str | None], ks: Sequence[int]) -> dict:
    """acc_all, pass@k and maj@k for each k (None when k > n for some question), maj@n and majority_gain."""
    n_max = min((len(c) for c in correct), default=0)
    out: dict = {"acc_all": _mean([sum(c) / len(c) for c in correct if c])}
    for k in sorted(set(ks)):
        p = [pass_at_k(len(c), sum(c), k) for c in correct]
        out[f"pass@{k}"] = None if any(v is None for v in p) else _mean(p)
    for k in sorted(set(ks) | ({n_max} if n_max else set())):
        m = [maj_correct(a, g, k) for a, g in zip(answers, golds)]
        out[f"maj@{k}"] = None if any(v is None for v in m) else _mean([float(v) for v in m])
    maj_n = out.get(f"maj@{n_max}")
    out["majority_gain"] = None if maj_n is None or out["acc_all"] is None else maj_n - out["acc_all"]
    return out
