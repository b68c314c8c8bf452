"""Answer equivalence for scoring, on top of the numeric extraction and equality of
crescent.answers.numeric (shared by voting at synthesis time and scoring at eval time):

- `canonical_number`: a gold value read from JSON/CSV (51.0, "51.0", "1,250") as the canonical
  string voting uses ("51", "1250"), so that numbers compare by value under exact match too;
- `equivalent`: two final answers mean the same: equal text (case and outer punctuation aside),
  the same number (voting's `answers_equal`: 51 = 51.0 = "$51", 1/2 = 0.5), or the same LaTeX
  expression (math_verify on `$...$`-wrapped text: \\frac{1}{2} = 0.5, \\dfrac{3}{4} = 3/4).
"""
from __future__ import annotations

import math
import re
import threading
from functools import lru_cache
from typing import Any

from crescent.answers.numeric import answers_equal, extract_answer

_PLAIN_NUMBER = re.compile(r"\s*\$?\s*-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*")
_OUTER = " \t\n.,;:!?\"'()[]{}"
_MATHS = re.compile(r"[\d\\]")  # a digit or a LaTeX command


def canonical_number(value: Any) -> Any:
    """A JSON/CSV number (or a string that is only a number) as voting's canonical string; anything
    else unchanged. 51.0 -> '51', '1,250' -> '1250', 0.5 -> '0.5', True -> True, 'x' -> 'x'."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return value
        text = repr(value) if isinstance(value, float) else str(value)
        return extract_answer(text) or text
    if isinstance(value, str) and _PLAIN_NUMBER.fullmatch(value):
        return extract_answer(value) or value
    return value


def _plain(s: str) -> str:
    return " ".join(s.strip().strip(_OUTER).lower().split())


@lru_cache(maxsize=8192)
def latex_equal(a: str, b: str) -> bool:
    """math_verify's equivalence of two short answers read as LaTeX maths (`$a$` vs `$b$`); False when
    either does not parse. Only LaTeX extraction is used (latex2sympy), never sympy's eval-based parser."""
    if not (a.strip() and b.strip()) or max(len(a), len(b)) > 400:
        return False
    try:
        from math_verify import LatexExtractionConfig, parse, verify

        t = 5 if threading.current_thread() is threading.main_thread() else None
        cfg = [LatexExtractionConfig()]

        def read(s: str):
            s = s.strip()
            return parse(s if s.startswith("$") or s.startswith("\\(") else f"${s}$", extraction_config=cfg,
                         parsing_timeout=t)

        pa, pb = read(a), read(b)
        return bool(pa and pb and verify(pa, pb, timeout_seconds=t))
    except Exception:  # an unparsable answer is simply not equivalent
        return False


def equivalent(answer: Any, gold: Any) -> bool:
    """Whether an extracted answer means the gold answer (see the module docstring); a list gold: any of it."""
    if isinstance(gold, (list, tuple)):
        return any(equivalent(answer, g) for g in gold)
    if answer is None or gold is None:
        return False
    a, g = str(canonical_number(answer)), str(canonical_number(gold))
    if "#### " in g:  # GSM8K-style gold: the final answer follows the marker
        g = g.rsplit("#### ", 1)[1]
    if _plain(a) == _plain(g) and _plain(a):
        return True
    if _only_number(a) and _only_number(g):  # the whole answer is one number: compare values
        return answers_equal(a.strip().rstrip("."), g.strip().rstrip("."))
    if _MATHS.search(a) and _MATHS.search(g):  # maths on both sides (never words: "no" vs "on" is n*o = o*n)
        return latex_equal(a.strip().strip("."), g.strip().strip("."))
    return False


_NUMBER_ONLY = re.compile(r"\s*(?:\\\$|\$)?\s*-?[\d,\s]*\.?\d+(?:/\d+)?\s*(?:%|\\%)?\s*\.?\s*")


def _only_number(s: str) -> bool:
    return bool(_NUMBER_ONLY.fullmatch(s))
