"""Verdict parsing for the CoT verifiers. Pure functions: model text in, (value, reason) out.

Each parser returns (value, None) when a verdict is found, else (None, reason) with reason one of
"empty", "no_verdict", "ambiguous", "no_score", "out_of_range", "no_choice". Model text is only
regex-searched, never evaluated. The first explicit marker wins ("Verdict: ...", "Score: ...",
"Better: ..."): the prompts ask for one, and a model that keeps writing after it usually starts a new
example.
"""
from __future__ import annotations

import re

_NEGATIVE = {"incorrect", "wrong", "false", "no", "invalid", "not correct", "not right"}
_WORDS = r"(not\s+correct|not\s+right|incorrect|correct|wrong|right|true|false|yes|no|invalid|valid)"
_DECOR = r"[\s*_`\"'(\[]*+"  # markdown bold, quotes, brackets around a verdict (possessive: linear time)
_MAX_CHARS = 20_000  # longer judgements are cut to their first and last _MAX_CHARS // 2 characters

# every pattern is linear: decoration runs are possessive and each optional separator is followed by a
# possessive run, so no two adjacent quantifiers can split the same run of characters between them
_SEP = r"(?:[:：=\-]" + _DECOR + r")?"
_VERDICT = re.compile(r"verdict" + _DECOR + _SEP + _WORDS + r"\b", re.I)
_IS = re.compile(r"\b(?:answer|solution|response|it)\s++is\s" + _DECOR + _WORDS + r"\b", re.I)
_BARE_POS = re.compile(r"\bcorrect\b", re.I)
_BARE_NEG = re.compile(r"\b(?:incorrect|wrong|not\s++correct)\b", re.I)

_NUM = r"(?<![\d.])(-?\d++(?:\.\d++)?+)"  # starts only at the start of a digit run
_SCORE = re.compile(r"score" + _DECOR + r"(?:(?:is|of)" + _DECOR + r")?" + _SEP + _NUM, re.I)
_OUT_OF = re.compile(_NUM + r"\s*+(?:/|out\s++of)\s*+10\b", re.I)

_CHOICE = re.compile(r"(?i:better(?>\s++(?:answer|response))?(?>\s++is\b)?)" + _DECOR + _SEP
                     + r"(?i:(?:answer|response)\s++)?\(?([AB])\b")
_CHOICE_IS = re.compile(r"(?i:\b(?:answer|response))\s++([AB])\s++(?i:is\s++(?:better|correct|right))")


def _capped(text: str) -> str:
    """At most _MAX_CHARS characters: the head (where the first marker sits) and the tail (the last one)."""
    if len(text) <= _MAX_CHARS:
        return text
    return text[: _MAX_CHARS // 2] + "\n" + text[-_MAX_CHARS // 2:]


def _polarity(word: str) -> bool:
    return re.sub(r"\s+", " ", word.lower()) not in _NEGATIVE


def parse_binary(text: str) -> tuple[bool | None, str | None]:
    """True (correct) / False (incorrect) from a CoT-Binary judgement.

    Order: the first "Verdict: <word>"; else the last "the answer is <word>"; else the bare words
    ("correct" vs "incorrect"/"wrong"/"not correct"): one kind only gives it, both are ambiguous."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty"
    text = _capped(text)
    m = _VERDICT.search(text)
    if m:
        return _polarity(m.group(1)), None
    found = list(_IS.finditer(text))
    if found:
        return _polarity(found[-1].group(1)), None
    neg = bool(_BARE_NEG.search(text))
    pos = bool(_BARE_POS.search(_BARE_NEG.sub(" ", text)))
    if pos and neg:
        return None, "ambiguous"
    if pos or neg:
        return pos, None
    return None, "no_verdict"


def parse_score(text: str, lo: float = 1.0, hi: float = 10.0) -> tuple[float | None, str | None]:
    """The score in [lo, hi] from a CoT-Score judgement: the first "Score: N" (also "Score: N/10"),
    else the last "N/10" / "N out of 10". A number outside [lo, hi] is "out_of_range"."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty"
    text = _capped(text)
    m = _SCORE.search(text)
    if m is None:
        found = list(_OUT_OF.finditer(text))
        m = found[-1] if found else None
    if m is None:
        return None, "no_score"
    value = float(m.group(1))
    if not lo <= value <= hi:
        return None, "out_of_range"
    return value, None


def parse_choice(text: str) -> tuple[str | None, str | None]:
    """'A' or 'B' from a pairwise judgement: the first "Better: A|B", else the last "Answer A is better"."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty"
    text = _capped(text)
    m = _CHOICE.search(text)
    if m:
        return m.group(1), None
    found = list(_CHOICE_IS.finditer(text))
    if found:
        return found[-1].group(1), None
    return None, "no_choice"
