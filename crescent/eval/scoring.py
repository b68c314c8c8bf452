"""Scores beyond lm-eval's exact_match: `math_equal` (an answer that means the gold answer), MATH's
Minerva scoring, and a warning when exact match misses answers that are right.

- `math_equal` is an lm-eval metric function (metric_list entry): 1 when the filtered answer is
  equivalent to the gold (crescent.answers.equivalent: same text, same number, same LaTeX value);
  a list gold counts when any element is equivalent (lm-eval calls it once per gold element).
- `minerva_process_results` scores MATH as lm-eval's minerva_math: exact_match on the normalised
  "Final Answer: The final answer is X" and math-verify of the whole response against the gold
  solution (lm-eval's `math_verify`, reported here as `math_equal`).
- `exact_misses` reads an lm-eval results dict: for each generation task and filter, when its first
  scored documents have 0 exact matches but some equivalent answers, one line naming the benchmark
  and the likely cause (logged as a warning by `warn_exact_misses`).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Iterable, Mapping

from crescent.answers import equivalent
from crescent.config.choices import GEN_METRICS as METRICS  # exact_match, math_equal

log = logging.getLogger(__name__)
WINDOW = 20  # first scored documents looked at by exact_misses


def math_equal(references: list, predictions: list, **_: Any) -> float:
    """lm-eval metric: mean equivalence of predictions to references (one pair per call in practice)."""
    # with several golds lm-eval hands over [answer] * n here once exact_match ran first: unwrap it
    pairs = [(r, _first(p)) for r, p in zip(references, predictions)]
    return sum(equivalent(p, r) for r, p in pairs) / max(len(pairs), 1)


def _math_verify(gold_solution: str, response: str) -> int:
    """lm-eval minerva_math's math_verify (verify(parse(solution), parse(response))), with LaTeX extraction only:
    math-verify's default also extracts plain digit/operator expressions and hands them to sympy's eval-based
    parse_expr, which the house rules forbid on model text. A response without LaTeX is read by crescent's own
    extraction (its final number, nothing evaluated) and compared by value with the solution's boxed answer."""
    try:
        from math_verify import LatexExtractionConfig, parse, verify

        t = 5 if threading.current_thread() is threading.main_thread() else None
        latex = [LatexExtractionConfig()]
        gold, target = (parse(x, extraction_config=latex, parsing_timeout=t) for x in (gold_solution, response))
        if gold and target:
            return int(bool(verify(gold=gold, target=target, timeout_seconds=t)))
    except Exception:
        return 0
    from crescent.answers import answers_equal, extract_answer

    mine, theirs = extract_answer(response), extract_answer(gold_solution)
    return int(mine is not None and theirs is not None and answers_equal(mine, theirs))


def minerva_process_results(doc: dict, results: list[str], metrics: Iterable[str] = METRICS) -> dict[str, int]:
    """MATH scored as lm-eval's minerva_math process_results (exact_match; math_verify as math_equal)."""
    from crescent.answers import minerva

    candidate = results[0]
    out = {}
    if "exact_match" in metrics:
        answer = minerva.normalize_final_answer(minerva.get_unnormalized_answer(candidate))
        out["exact_match"] = int(minerva.is_equiv(answer, doc["answer"]))
    if "math_equal" in metrics:
        out["math_equal"] = _math_verify(doc["solution"], candidate)
    return out


def _first(v: Any) -> Any:
    while isinstance(v, (list, tuple)) and len(v) == 1:
        v = v[0]
    return v


def _gold(target: Any) -> Any:
    if isinstance(target, str) and target.startswith("[") and target.endswith("]"):
        import json

        try:  # a gold list written as JSON (nothing evaluated)
            return json.loads(target)
        except ValueError:
            return target
    return target


def exact_misses(raw: Mapping[str, Any], window: int = WINDOW) -> list[str]:
    """One line per (benchmark, filter) whose first `window` scored documents have no exact match but at
    least one answer equivalent to the gold (e.g. gold 51.0 vs answer 51, or \\frac{1}{2} vs 0.5)."""
    lines = []
    for task, samples in (raw.get("samples") or {}).items():
        by_filter: dict[str, list[dict]] = {}
        for s in samples:
            if "exact_match" in s:
                by_filter.setdefault(s.get("filter", "none"), []).append(s)
        for filt, rows in by_filter.items():
            rows = sorted(rows, key=lambda s: s["doc_id"])[:window]
            if any(s["exact_match"] for s in rows):
                continue
            hits = [(s, _first(s.get("filtered_resps"))) for s in rows]
            hits = [(s, a) for s, a in hits if isinstance(a, str) and equivalent(a, _gold(s.get("target")))]
            if hits:
                s, a = hits[0]
                lines.append(
                    f"benchmark {task!r} (filter {filt}): 0 exact matches in its first {len(rows)} documents, but "
                    f"{len(hits)} answer(s) equal the gold in value, e.g. answer {a!r} vs gold {s.get('target')!r}. "
                    "Likely cause: the gold is written differently from the answers (a float such as 51.0, "
                    "units, LaTeX, a '#### ' marker); add `metric: [exact_match, math_equal]` to the benchmark "
                    "or write the gold as the answers are written.")
    return lines


def warn_exact_misses(raw: Mapping[str, Any]) -> None:
    for line in exact_misses(raw):
        log.warning(line)
