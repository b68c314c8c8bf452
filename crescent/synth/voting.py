"""Final-answer extraction, answer equality and majority voting (self-consistency).

`extract_answer` turns a model response into a canonical number string (regex `CANONICAL`):
``-?\\d+(\\.\\d+)?(/\\d+)?`` -- exact decimals where the value terminates (``3/4`` -> ``"0.75"``,
``12.50`` -> ``"12.5"``), else a reduced fraction (``"1/3"``). Evidence, strongest first:

1. the last ``####`` marker followed by a number (``#### 42``, ``#### Answer: $1,250.00``);
2. the last ``\\boxed{...}`` (nested braces, ``\\frac``/``\\dfrac``/``\\tfrac``);
3. the last "The answer is N" / "final answer is N" / "Answer: N" (LMSI style);
4. the last number in the final 4,000 characters, skipping exponents (``x^2``), ``Step 3`` and
   list markers (``1.``) when a better candidate exists.

Security: model text is data; nothing here evals it. `math_verify.parse` (0.9.0) regex-searches
plain text for a number or a digit/operator expression (``[\d.\s+\-*×/^()÷]``) and hands the
latter to sympy's eval-based ``parse_expr``; LaTeX goes to latex2sympy; text without numbers
gives ``[]``. `answers_equal` therefore calls it only with strings matching `CANONICAL`.
"""
from __future__ import annotations

import random
import re
import threading
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

TIE_POLICIES = ("first", "random", "drop")
CANONICAL = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?", re.ASCII)

_TAIL_CHARS = 4000  # fallbacks only look at the end of a response
_MARKER_CHARS = 300  # how far after a marker the answer may sit
_MAX_DIGITS = 60  # longer digit runs are not answers (and int() has a 4300-digit limit)
_MAX_EXP = 30  # 1e3 is an answer; 1e400 is not

_SEP = r"[ \u00a0\u2009\u202f]"  # thousands separators written as spaces


def _number_regex(space_groups: bool) -> re.Pattern:
    grouped = r"\d{1,3}(?:,\d{3})+(?!\d)|" + (r"\d{1,3}(?:" + _SEP + r"\d{3})+(?![\d/])|" if space_groups else "")
    return re.compile(
        r"(?<![\w.])"  # not glued to a word ("x2", "H2O") or to a previous decimal point
        r"(?P<sign>[-\u2212\u2013])?(?:[$€£¥₹]\s?)?(?P<sign2>[-\u2212\u2013])?(?=\.?\d)"
        r"(?:"
        r"(?P<mw>\d{1,6})[ \u00a0](?P<mn>\d{1,6})\s?/\s?(?P<md>\d{1,6})(?![\d/.])"  # mixed: 2 1/2
        r"|(?P<fn>\d+(?:\.\d+)?)\s?/\s?(?P<fd>\d+(?:\.\d+)?)(?![\d/])"  # fraction: 3/4
        r"|(?P<int>" + grouped + r"\d+)?(?P<dec>\.\d+)?"
        r"(?:[eE](?P<exp>[-+]?\d{1,3})(?!\w)"
        r"|\s?(?:×|\\times|\\cdot|\*|·)\s?10\s?\^\s?\{?(?P<exp2>[-+\u2212]?\d{1,3})\}?)?"
        r")"
    )


_NUMBER = _number_regex(space_groups=True)  # after a marker: "#### 1 250" is 1250
_LOOSE_NUMBER = _number_regex(space_groups=False)  # free text: "4 500-page books" is 4 and 500
_NON_FINITE = re.compile(
    r"^\W*(?:answer\W*)?(?:nan|[-+]?inf(?:inity)?|[-+]?∞|[-+]?\\infty|undefined)\b", re.I
)
_ANSWER_IS = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:|=)", re.I)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*)\}\s*\{\s*([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_LATEX_WORD = re.compile(r"\\(?:text|mathrm|textbf|mathbf|operatorname)\s*\{[^{}]*\}")
_LATEX_DROP = re.compile(r"\\[,;:! ]|\\left|\\right|\\\$|\\%|\{,\}")


def _to_ascii_digits(s: str) -> str:
    """Map any Unicode decimal digit (fullwidth, Arabic-Indic, ...) to ASCII."""
    if s.isascii():
        return s
    return "".join(str(unicodedata.decimal(c)) if c.isdigit() and unicodedata.decimal(c, None) is not None
                   else c for c in s)


def _fraction(s: str | None) -> Fraction | None:
    if not s:
        return None
    s = _to_ascii_digits(s).replace(",", "")
    for sp in " \u00a0\u2009\u202f":
        s = s.replace(sp, "")
    if sum(c.isdigit() for c in s) > _MAX_DIGITS:
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _canonical(x: Fraction) -> str:
    """Exact decimal when the value terminates, else the reduced fraction."""
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    num, den = abs(x.numerator), x.denominator
    d, twos, fives = den, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d != 1:
        return f"{sign}{num}/{den}"
    places = max(twos, fives)
    scaled = str(num * (10**places // den)).rjust(places + 1, "0")
    whole, frac = scaled[: len(scaled) - places], scaled[len(scaled) - places:].rstrip("0")
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def _value(m: re.Match) -> Fraction | None:
    """The exact value of one `_NUMBER` match, or None if it is not a usable number."""
    g = m.groupdict()
    if g["md"] is not None:
        whole, part = _fraction(g["mw"]), _fraction(f"{g['mn']}/{g['md']}")
        value = None if whole is None or part is None else whole + part
    elif g["fd"] is not None:
        num, den = _fraction(g["fn"]), _fraction(g["fd"])
        value = None if num is None or not den else num / den
    else:
        if g["int"] is None and g["dec"] is None:
            return None
        value = _fraction((g["int"] or "0") + (g["dec"] or ""))
        exp = g["exp"] or g["exp2"]
        if value is not None and exp is not None:
            e = int(_to_ascii_digits(exp).replace("\u2212", "-"))
            value = value * Fraction(10) ** e if abs(e) <= _MAX_EXP else None
    if value is not None and (g["sign"] or g["sign2"]):
        value = -value
    return value


def _delatex(s: str) -> str:
    """Rewrite the LaTeX that answers use into plain text numbers."""
    if "\\" not in s and "{," not in s:
        return s
    s = _LATEX_WORD.sub(" ", s)
    s = _LATEX_DROP.sub("", s)
    s = _FRAC.sub(lambda m: _spaced(m, f"{m.group(1).strip()}/{m.group(2).strip()}"), s)
    return _FRAC_SHORT.sub(lambda m: _spaced(m, f"{m.group(1)}/{m.group(2)}"), s)


def _spaced(m: re.Match, frac: str) -> str:
    """'2\\frac{1}{2}' -> '2 1/2' (mixed number) but '-\\frac{3}{4}' -> '-3/4'."""
    return f" {frac}" if m.start() and m.string[m.start() - 1].isdigit() else frac


def _first_number(segment: str) -> str | None:
    """The answer in a short segment after a marker: the first number after the last '=' if any."""
    segment = _delatex(segment)
    if "=" in segment:
        after = segment.rsplit("=", 1)[1]
        if any(c.isdigit() for c in after):
            segment = after
    for m in _NUMBER.finditer(segment):
        value = _value(m)
        if value is not None:
            return _canonical(value)
    return None


def _is_weak(text: str, m: re.Match) -> bool:
    """Exponents (x^2), 'Step 3' and '1.' list markers: only used when nothing better exists."""
    before = text[max(0, m.start() - 12): m.start()]
    if before.rstrip().endswith(("^", "^{")) or before.lower().rstrip().endswith(("step", "part")):
        return True
    line = before.rsplit("\n", 1)
    at_line_start = not line[-1].strip() and (len(line) == 2 or m.start() <= 12)
    return at_line_start and text[m.end(): m.end() + 2] in (". ", ".\n", ") ", ".", ")")


def _after_hashes(text: str) -> str | None:
    parts = text.split("####")
    if len(parts) == 1:
        return None
    for i, part in enumerate(reversed(parts[1:])):
        lines = [line for line in part[:_MARKER_CHARS].splitlines() if line.strip()]
        if i == 0 and lines and _NON_FINITE.match(lines[0]):
            return None
        for line in lines:  # "####\n\n42", "#### Answer:\n42"
            answer = _first_number(line)
            if answer is not None:
                return answer
    return None


def _boxed_contents(text: str) -> list[str]:
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        end = min(len(text), i + _MARKER_CHARS)
        while i < end and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append(text[m.end(): i - 1] if depth == 0 else text[m.end(): end])
    return out


def _from_boxed(tail: str) -> str | None:
    contents = _boxed_contents(tail)
    if contents and _NON_FINITE.match(contents[-1]):
        return None
    for content in reversed(contents):
        answer = _first_number(content)
        if answer is not None:
            return answer
    return None


def _from_answer_is(tail: str) -> str | None:
    for m in reversed(list(_ANSWER_IS.finditer(tail))):
        segment = tail[m.end(): m.end() + _MARKER_CHARS].strip().split("\n", 1)[0]
        answer = _first_number(segment)
        if answer is not None:
            return answer
    return None


def _last_number(tail: str) -> str | None:
    tail = _delatex(tail)
    weak = None
    for m in reversed(list(_LOOSE_NUMBER.finditer(tail))):
        value = _value(m)
        if value is None:
            continue
        if not _is_weak(tail, m):
            return _canonical(value)
        weak = weak or _canonical(value)
    return weak


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a response as a canonical number string, or None."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        answer = _after_hashes(text[-20 * _TAIL_CHARS:])
        if answer is not None:
            return answer
        tail = text[-_TAIL_CHARS:]
        for strategy in (_from_boxed, _from_answer_is, _last_number):
            answer = strategy(tail)
            if answer is not None:
                return answer
    except Exception:  # extraction must never take a pipeline down; no answer is a valid outcome
        return None
    return None


def _as_canonical(a: str) -> str | None:
    a = a.strip()
    return a if CANONICAL.fullmatch(a) else extract_answer(a)


@lru_cache(maxsize=4096)
def _math_verify_equal(a: str, b: str) -> bool:
    """math_verify's equivalence (numeric tolerance, e.g. 1/3 ~ 0.333333) on canonical strings only."""
    if not (CANONICAL.fullmatch(a) and CANONICAL.fullmatch(b)):
        return False
    try:
        from math_verify import parse, verify

        # signal-based timeouts only work on the main thread; inputs are short validated numbers
        t = 5 if threading.current_thread() is threading.main_thread() else None
        return bool(verify(parse(a, parsing_timeout=t), parse(b, parsing_timeout=t), timeout_seconds=t))
    except Exception:
        return False


def answers_equal(a: str | None, b: str | None) -> bool:
    """Whether two answers are the same number. None never equals anything.

    Exact string match, then exact value (Fraction), then math_verify's equivalence -- only on
    strings matching `CANONICAL`, and only when one side is non-integer (two different integers
    are never equal). Non-canonical inputs (e.g. a gold "1,250") are canonicalised first.
    """
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    if a == b:
        return bool(a.strip())
    ca, cb = _as_canonical(a), _as_canonical(b)
    if ca is None or cb is None:
        return False
    if ca == cb or Fraction(ca) == Fraction(cb):
        return True
    if "." not in ca + cb and "/" not in ca + cb:
        return False
    return _math_verify_equal(ca, cb)


@dataclass(frozen=True)
class Vote:
    """The outcome of one majority vote over k sampled answers."""

    answer: str | None
    count: int  # samples whose answer equals `answer` (0 when no answer)
    k: int  # all samples
    n_valid: int  # samples with an extractable answer
    n_invalid: int  # samples without one (None)
    agreement: float  # count / k; 0.0 when no answer
    tied: bool  # several answers shared the top count
    reason: str | None  # None when an answer was chosen, else "no_valid_answer" or "tie"


def majority_vote(answers: Sequence[str | None], tie: str = "first", seed: int = 0) -> Vote:
    """Most common answer among `answers` (grouped with `answers_equal`); None never wins.

    Ties: "first" keeps the tied answer seen earliest, "random" picks with `random.Random(seed)`,
    "drop" returns no answer with reason "tie".
    """
    if tie not in TIE_POLICIES:
        raise ValueError(f"tie must be one of {TIE_POLICIES}, got {tie!r}")
    answers = list(answers)
    k = len(answers)
    groups: list[list] = []  # [representative, count], in order of first occurrence
    for a in answers:
        if not isinstance(a, str) or not a.strip():
            continue
        for g in groups:
            if answers_equal(g[0], a):
                g[1] += 1
                break
        else:
            groups.append([a, 1])
    n_valid = sum(g[1] for g in groups)
    if not groups:
        return Vote(None, 0, k, 0, k, 0.0, False, "no_valid_answer")
    top = max(g[1] for g in groups)
    tied_groups = [g for g in groups if g[1] == top]
    tied = len(tied_groups) > 1
    if tied and tie == "drop":
        return Vote(None, 0, k, n_valid, k - n_valid, 0.0, True, "tie")
    chosen = random.Random(seed).choice(tied_groups) if tied and tie == "random" else tied_groups[0]
    return Vote(chosen[0], top, k, n_valid, k - n_valid, top / k, tied, None)
