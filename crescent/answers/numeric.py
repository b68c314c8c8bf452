"""Final-answer extraction, answer equality and majority voting (self-consistency).

`extract_answer` turns a model response into a canonical number string (regex `CANONICAL`):
``-?\\d+(\\.\\d+)?(/\\d+)?`` -- exact decimals where the value terminates (``3/4`` -> ``"0.75"``,
``12.50`` -> ``"12.5"``), else a reduced fraction (``"1/3"``); no ``+``, no leading or trailing zeros,
zero is ``"0"`` (never ``"-0"``). Unicode digits (``٣``, ``３``) and minus signs (``−``, ``‒``, ``–``)
are read, ANSI escapes dropped. Evidence, strongest first:

1. the last ``####`` marker followed by a number (``#### 42``, ``#### Answer: $1,250.00``);
2. the last ``\\boxed{...}`` (nested braces, ``\\frac``/``\\dfrac``/``\\tfrac``);
3. the last "The answer is N" / "final answer is N" / "Answer: N" (LMSI style);
4. the last number in the final 4,000 characters, skipping exponents (``x^2``), ``Step 3`` and
   list markers (``1.``) when a better candidate exists.

A marker (1-3) whose content is not a finite number ends the search with no answer instead of
falling back to earlier numbers: ``#### NaN`` / ``\\boxed{\\infty}`` / "the answer is undefined"
(reason ``non_finite``), and unevaluated maths such as ``\\boxed{2\\sqrt{2}}``, ``4\\pi``, ``2^{10}``,
``#### 5 + 3`` (reason ``symbolic``; ``\\sqrt{16}`` of a perfect square is read as ``4``).
`parse_answer` returns the value or the reason (`INVALID_REASONS`); `extract_answer` the value only.

Security: model text is data; nothing here evals it. `math_verify.parse` (0.9.0) regex-searches
plain text for a number or a digit/operator expression (``[\d.\s+\-*×/^()÷]``) and hands the
latter to sympy's eval-based ``parse_expr``; LaTeX goes to latex2sympy; text without numbers
gives ``[]``. `answers_equal` therefore calls it only with strings matching `CANONICAL`.
"""
from __future__ import annotations

import math
import random
import re
import threading
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

from crescent.config.choices import TIE_POLICIES

CANONICAL = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?", re.ASCII)
# why a response has no answer: not a string; blank; the final marker holds NaN/inf/undefined; it holds
# unevaluated maths (a root, pi, a power, an operator); no usable number at all; a bug (never expected)
INVALID_REASONS = ("not_text", "empty", "non_finite", "symbolic", "no_number", "error")

_TAIL_CHARS = 4000  # fallbacks only look at the end of a response
_MARKER_CHARS = 300  # how far after a marker the answer may sit
_MAX_DIGITS = 60  # longer digit runs are not answers (and int() has a 4300-digit limit)
_MAX_EXP = 30  # 1e3 is an answer; 1e400 is not

_SEP = r"[ \u00a0\u2009\u202f]"  # thousands separators written as spaces
_MINUS = "-\u2212\u2012\u2013\ufe63\uff0d"  # hyphen, minus sign, figure/en dash, small/fullwidth hyphen
_TO_HYPHEN = str.maketrans(dict.fromkeys(_MINUS[1:], "-"))


def _number_regex(space_groups: bool) -> re.Pattern:
    if space_groups:  # after a marker: "#### 1 250"
        spaced = r"\d{1,3}(?:" + _SEP + r"\d{3})+(?![\d/])|"
    else:  # free text: only "1 000 000" (a group with a leading 0) or groups that end a sentence ("is 1 250.")
        spaced = (r"\d{1,3}(?:" + _SEP + r"\d{3})*" + _SEP + r"0\d\d(?:" + _SEP + r"\d{3})*(?![\d/])|"
                  r"\d{1,3}(?:" + _SEP + r"\d{3})+(?=[.!?;:,)]?\s*$|[.!?;:,)]\s)|")
    grouped = r"\d{1,3}(?:,\d{3})+(?!\d)|" + spaced
    return re.compile(
        r"(?<![\w.])"  # not glued to a word ("x2", "H2O") or to a previous decimal point
        r"(?P<sign>[" + _MINUS + r"])?(?:[$€£¥₹]\s?)?(?P<sign2>[" + _MINUS + r"])?(?=\.?\d)"
        r"(?:"
        r"(?P<mw>\d{1,6})[ \u00a0](?P<mn>\d{1,6})\s?/\s?(?P<md>\d{1,6})(?![\d/.])"  # mixed: 2 1/2
        r"|(?P<fn>\d+(?:\.\d+)?)\s?/\s?(?P<fd>\d+(?:\.\d+)?)(?![\d/])"  # fraction: 3/4
        r"|(?P<int>" + grouped + r"\d+)?(?P<dec>\.\d+)?"
        r"(?:[eE](?P<exp>[-+]?\d{1,3})(?!\w)"
        r"|\s?(?:×|\\times|\\cdot|\*|·)\s?10\s?\^\s?\{?(?P<exp2>[-+" + _MINUS[1:] + r"]?\d{1,3})\}?)?"
        r")"
    )


_NUMBER = _number_regex(space_groups=True)  # after a marker: "#### 1 250" is 1250
_LOOSE_NUMBER = _number_regex(space_groups=False)  # free text: "4 500-page books" is 4 and 500
_NON_FINITE = re.compile(
    r"^[^\w∞]*(?:answer\W*)?(?:nan|[-+" + _MINUS[1:] + r"]?(?:inf(?:inity)?|∞|\\infty)|undefined)(?!\w)", re.I
)
# unevaluated maths around the number read from a marker: 2\sqrt{2}, 4\pi, 2^{10}, 9**9, 5 + 3, \sqrt{2}
_SUPERSCRIPTS = "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079"
_SYMBOLIC_AFTER = re.compile(r"\^|[" + _SUPERSCRIPTS + r"]|\*\*\s*+\d|\s*+(?:\\sqrt|√|\\pi|π)|\s*+(?:[-+*×÷·/"
                             + _MINUS[1:] + r"]|\\times|\\cdot|\\div)\s*+[-(]?\.?\d")
# a digit glued to hex/octal/binary prefixes or digit underscores: 0x1F, 0b101, 1_000 (read as no answer)
_GLUED = re.compile(r"[xXbBoO][0-9a-fA-F]|_\d")
# zero-width characters, a BOM, variation selectors and the keycap mark: "4\u200d2" is 42, "4\ufe0f\u20e3" is 4
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\ufe0e\ufe0f\u20e3"))
_SYMBOLIC_BEFORE = re.compile(r"(?:\\sqrt\s*(?:\[[^\]]*\])?\s*\{?|√|\^\s*\{?|\\pi\s*|π\s*)\s*$")
_SQRT = re.compile(r"\\sqrt\s*\{\s*(\d{1,30})\s*\}|√\s*(\d{1,30})(?![\d.])")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ANSWER_IS = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:|=)", re.I)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC = re.compile(r"\\[dt]?frac\s*+\{\s*+([^{}]*+)\}\s*+\{\s*+([^{}]*+)\}")
_FRAC_SHORT = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_LATEX_WORD = re.compile(r"\\(?:text|mathrm|textbf|mathbf|operatorname)\s*+\{([^{}]*+)\}")
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


_STRICT = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d*[1-9])?|-?[1-9]\d*/[1-9]\d*", re.ASCII)


def is_canonical(s: object) -> bool:
    """Whether `s` is in the canonical form `extract_answer` returns (see the module docstring)."""
    if not isinstance(s, str) or not _STRICT.fullmatch(s) or s == "-0":
        return False
    return "/" not in s or _canonical(Fraction(s)) == s  # a reduced, non-terminating fraction


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
            e = int(_to_ascii_digits(exp).translate(_TO_HYPHEN))
            value = value * Fraction(10) ** e if abs(e) <= _MAX_EXP else None
    if value is not None and (g["sign"] or g["sign2"]):
        value = -value
    return value


def _delatex(s: str) -> str:
    """Rewrite the LaTeX that answers use into plain text numbers."""
    s = _roots(s)
    if "\\" not in s and "{," not in s:
        return s
    s = _LATEX_WORD.sub(lambda m: f" {m.group(1)} ", s)  # \text{42} keeps its 42
    s = _LATEX_DROP.sub("", s)
    s = _FRAC.sub(lambda m: _spaced(m, f"{m.group(1).strip()}/{m.group(2).strip()}"), s)
    return _FRAC_SHORT.sub(lambda m: _spaced(m, f"{m.group(1)}/{m.group(2)}"), s)


def _roots(s: str) -> str:
    """'\\sqrt{16}' and '√16' -> '4' (perfect squares only, not after a digit: 2\\sqrt{16} stays)."""
    if "sqrt" not in s and "√" not in s:
        return s

    def root(m: re.Match) -> str:
        n = int(m.group(1) or m.group(2))
        r = math.isqrt(n)
        glued = m.start() and m.string[m.start() - 1].isdigit()
        return str(r) if r * r == n and not glued else m.group(0)

    return _SQRT.sub(root, s)


def _spaced(m: re.Match, frac: str) -> str:
    """'2\\frac{1}{2}' -> '2 1/2' (mixed number) but '-\\frac{3}{4}' -> '-3/4'."""
    return f" {frac}" if m.start() and m.string[m.start() - 1].isdigit() else frac


@dataclass(frozen=True)
class Parsed:
    """The outcome of reading one response: a canonical number (reason None) or a reason (value None)."""

    value: str | None
    reason: str | None


def _marker_answer(segment: str) -> Parsed | None:
    """The answer in a short segment after a marker: the first number after the last '=' if any.

    None when the segment holds no number; a Parsed reason when it holds NaN/inf or unevaluated maths."""
    segment = _delatex(segment)
    if "=" in segment:
        after = segment.rsplit("=", 1)[1]
        if any(c.isdigit() for c in after) or _NON_FINITE.match(after):
            segment = after
    if _NON_FINITE.match(segment):
        return Parsed(None, "non_finite")
    for m in _NUMBER.finditer(segment):
        value = _value(m)
        if value is None:  # 1e309, 1e-400, a 61+-digit run, 7/0: the marker holds no finite number
            return Parsed(None, "non_finite")
        if _GLUED.match(segment, m.end()):
            return Parsed(None, "symbolic")
        if value is not None:
            symbolic = _SYMBOLIC_AFTER.match(segment, m.end()) or _SYMBOLIC_BEFORE.search(
                segment, max(0, m.start() - 20), m.start())
            if symbolic:
                return Parsed(None, "symbolic")
            return Parsed(_canonical(value), None)
    return None


def _is_weak(text: str, m: re.Match) -> bool:
    """Exponents (x^2), 'Step 3' and '1.' list markers: only used when nothing better exists."""
    before = text[max(0, m.start() - 12): m.start()]
    if before.rstrip().endswith(("^", "^{")) or before.lower().rstrip().endswith(("step", "part")):
        return True
    line = before.rsplit("\n", 1)
    at_line_start = not line[-1].strip() and (len(line) == 2 or m.start() <= 12)
    return at_line_start and text[m.end(): m.end() + 2] in (". ", ".\n", ") ", ".", ")")


def _after_hashes(text: str) -> Parsed | None:
    parts = text.split("####")
    for part in reversed(parts[1:]):  # the last marker with any content decides
        for line in part[:_MARKER_CHARS].splitlines():  # "####\n\n42", "#### Answer:\n42"
            answer = _marker_answer(line) if line.strip() else None
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


def _from_boxed(tail: str) -> Parsed | None:
    for content in reversed(_boxed_contents(tail)):
        answer = _marker_answer(content)
        if answer is not None:
            return answer
    return None


def _from_answer_is(tail: str) -> Parsed | None:
    for m in reversed(list(_ANSWER_IS.finditer(tail))):
        segment = tail[m.end(): m.end() + _MARKER_CHARS].strip().split("\n", 1)[0]
        answer = _marker_answer(segment)
        if answer is not None:
            return answer
    return None


def _last_number(tail: str) -> Parsed | None:
    tail = _delatex(tail)
    weak = None
    for m in reversed(list(_LOOSE_NUMBER.finditer(tail))):
        value = _value(m)
        if value is None:
            continue
        if not _is_weak(tail, m):
            return Parsed(_canonical(value), None)
        weak = weak or Parsed(_canonical(value), None)
    return weak


def parse_answer(text: str) -> Parsed:
    """The final numeric answer of a response as a canonical number string, or why there is none."""
    if not isinstance(text, str):
        return Parsed(None, "not_text")
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if not text.strip():
        return Parsed(None, "empty")
    text = text.translate(_INVISIBLE)
    try:
        tail = text[-_TAIL_CHARS:]
        answer = (_after_hashes(text[-20 * _TAIL_CHARS:]) or _from_boxed(tail) or _from_answer_is(tail)
                  or _last_number(tail))
    except Exception:  # extraction must never take a pipeline down; no answer is a valid outcome
        return Parsed(None, "error")
    return answer or Parsed(None, "no_number")


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a response as a canonical number string, or None (see parse_answer)."""
    return parse_answer(text).value


def _as_canonical(a: str) -> str | None:
    a = a.strip()
    if CANONICAL.fullmatch(a) and len(a) <= _MAX_DIGITS:
        return None if re.fullmatch(r"[^/]*/0+", a) else a  # a zero denominator is no number
    return extract_answer(a)  # None for over-long digit runs, as in extraction


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
    """Whether two answers are the same number. None, and text that holds no number, never equal anything.

    Exact string match, then exact value (Fraction), then math_verify's equivalence -- only on
    strings matching `CANONICAL`, and only when one side is non-integer (two different integers
    are never equal). Non-canonical inputs (e.g. a gold "1,250") are canonicalised first.
    """
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    ca = _as_canonical(a)
    if a == b or ca is None:
        return ca is not None
    cb = _as_canonical(b)
    if cb is None:
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
    """Most common answer among `answers` (grouped with `answers_equal`); None and non-numbers never win.

    Ties: "first" keeps the tied answer seen earliest, "random" picks with `random.Random(seed)`,
    "drop" returns no answer with reason "tie".
    """
    if tie not in TIE_POLICIES:
        raise ValueError(f"tie must be one of {TIE_POLICIES}, got {tie!r}")
    answers = list(answers)
    k = len(answers)
    groups: list[list] = []  # [representative, count], in order of first occurrence
    for a in answers:
        if not isinstance(a, str) or _as_canonical(a) is None:
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
