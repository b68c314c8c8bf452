"""Turn one raw bait sample into a clean math question, or reject it with a reason.

The maths is never touched: ``$12.50``, ``3/4``, ``-5``, ``2x + 3 = 11``, ``45%``, ``(3 + 4) × 2``,
``€`` and ``π`` survive unchanged (the authors' regex deleted ``$ % / + - = ( )`` and non-ASCII).
Only chat wrapping is removed: preambles ("Sure! Here's a ... problem:", "**Problem:**", a title
heading, an intro clause such as "A simple yet profound math problem:"), markdown emphasis markers,
wrapping quotes, special tokens, control and invisible characters (zero-width, bidi overrides), and
-- once the text already asks something -- everything from a solution/answer section ("Solution:",
"Answer:", "####", "Step 1:", "To solve this ...") or closing chatter ("Good luck!", "Hint: ...") onwards.
Whitespace is collapsed to single spaces.

Rejection reasons (`REASONS`), checked in this order:

- ``empty``: nothing left after stripping the wrapping.
- ``not_text``: the input is not a string, or under 20% of its non-space characters are letters
  (token soup, digit dumps).
- ``too_short``: fewer than ``min_words`` words (whitespace tokens with a letter or digit).
- ``too_long``: more than ``max_chars`` characters after cleaning.
- ``answer_leak``: the remaining text still gives the answer. Answer sections *after* the ask are
  cut, not rejected, so this catches answers placed before or inside the question: ``####``,
  ``\\boxed``, "answer is 8" / "Answer: 8" (a number must follow), or text ending in ``? = 42`` /
  ``? 42`` after its last question mark.
- ``not_a_question``: ``require_question`` and there is no ``?`` and no sentence that opens with
  an ask (find, calculate, determine, compute, solve, show, evaluate, "what is", "how many", ...).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

REASONS = ("empty", "not_text", "too_short", "too_long", "answer_leak", "not_a_question")

_MAX_INPUT = 20_000  # raw samples are cut to this many characters before any regex runs
_MIN_LETTER_SHARE = 0.2

_SPECIAL_TOKENS = re.compile(r"<\|[^|<>\n]{0,60}\|>|</?s>|\[/?INST\]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_INVISIBLE = ("Cc", "Cf", "Cs")  # controls; zero-width and bidi overrides ("Trojan Source"); lone surrogates
_LINE_START = r"(?:^|(?<=\n)|(?<=[.!?:])[ \t])[ \t>#*_-]*+"  # possessive: linear time  # start of a line or of a sentence

_PREAMBLES = [re.compile(p, re.I) for p in (
    # "Sure!", "Certainly,", "Of course." (the interjection must be followed by punctuation)
    r"^(?:sure(?: thing)?|certainly|of course|absolutely|okay|ok|great|alright)[ \t]*[.!,:]",
    r"^(?:i(?:'d| would) (?:be (?:happy|glad)|love)|i can (?:do that|help)|i'll (?:create|give|make))"
    r"[^\n.!:]{0,100}[.!:\n]",
    # "Here's a unique math word problem:", "Below is a problem for you." (up to the first stop)
    r"^(?=[^\n:.!?]{0,220}\b(?:problem|question|puzzle|challenge|one|math|for you|goes)\b)"
    r"(?:here(?:'s|’s| is| are| goes)|below is|i(?:'ve| have) (?:created|come up with|made))[^\n:.!?]{0,200}[:.!\n]",
    # "**Problem:**", "### Problem 1:", "Math Word Problem:", "Question:", "**Problem Statement**:"
    r"^(?:#{1,6}[ \t]*+)?(?:\*\*|__)?[ \t]*+(?:(?:math(?:ematics)?|word|unique|high school|new)[ \t]++){0,3}"
    r"(?:problem|question|puzzle|challenge)(?:[ \t]+statement)?(?:[ \t]*#?\d{1,3})?"
    r"[ \t]*(?:\*\*|__)?[ \t]*[:：][ \t]*(?:\*\*|__)?",
    r"^(?:\*\*|__)(?:problem|question)(?:\*\*|__)[ \t]*\n",  # "**Problem**" on its own line
    r"^#{1,6}[ \t]+(?![-−$€£\d]|answer)[^\n?]{0,100}\n",  # heading "### The Garden Puzzle", not "#### 8"
    r"^(?:\*\*|__)[^\n*_?]{1,80}(?<![.!?])(?:\*\*|__)[ \t]*\n",  # bold title line "**The Garden Puzzle**"
    r"^```[a-z]*[ \t]*\n",  # opening code fence
)]
# An intro clause that announces the problem and ends in a colon: "A simple yet profound math problem:",
# "One creative math word problem:", "The problem with a twist is:". Never one that itself asks ("Solve ...:").
_INTRO_CLAUSE = re.compile(
    r"^(?![^\n:]*\b(?:find|calculate|determine|compute|solve|evaluate|simplify|how (?:many|much|long|far|old)|what is|which)\b)"
    r"[^\n:?]{0,160}\b(?:problem|question|puzzle|challenge|riddle)s?\b[^\n:?]{0,40}[:：]",
    re.I,
)
_TAIL_MARKERS = re.compile(
    r"####|" + _LINE_START + r"(?:"
    r"(?:\*\*|__)?(?:solution|answer|final answer|explanation|reasoning|step[ \t]*1|steps|hints?|notes? to solver)"
    r"(?:\*\*|__)?[ \t]*(?:[:：.]|\n|\*\*|$)"
    r"|(?:the |my )?(?:final |correct )?answer is"
    r"|(?:to solve (?:this|the|it)|let'?s (?:solve|break|start|think|denote|use|find|calculate)|let me "
    r"|we (?:can|need to|will) (?:solve|start|use|find|calculate)|first,? (?:we|let'?s)"
    r"|here(?:'s|’s| is) (?:the|a|my) (?:solution|answer|step)"
    r"|good luck|have fun|enjoy|happy (?:solving|calculating)|feel free|i hope|hope you"
    r"|(?:please )?let me know|would you like|do you want|can you solve (?:it|this)|(?:this|the) (?:\w+ ){0,2}(?:problem|question|puzzle) "
    r"(?:requires|involves|tests|is designed|combines|encourages|can be solved|has|showcases|challenges|highlights"
    r"|is a great|is an? (?:example|fun|classic))|```)"
    r")",
    re.I,
)
# An ask: a question mark, or a sentence that opens with an instruction or a question word
# ("Find x.", "Calculate the area."). A bare "What a story!" is not an ask.
_ASKS = re.compile(
    r"\?|？|(?:^|[.!:;]\s|\n)[\s*_\"'(]*+(?:please\s+|now\s+|then\s+)?(?:find|calculate|determine|compute"
    r"|solve|show|prove|evaluate|simplify|estimate|express|work out|figure out|give|state"
    r"|what (?:is|are|was|were|will|would|does|did)|which|how (?:many|much|long|far|old|fast|often|tall|big))\b",
    re.I,
)
_LEAK = re.compile(r"####|\\boxed|\banswer\s*(?:is|[:：=])\s*[:：]?\s*[-$€£(\\]?\d", re.I)
_LEAK_AFTER_QUESTION = re.compile(r"[?？][\s*]*(?:=\s*)?[-$€£]?\d[\d,./%]*\s*[.!]?\s*$")
_BOLD = re.compile(r"(?<![\w*])(\*\*|__)(?=\S)([^\n]{0,300}?)(?<=\S)\1(?![\w*])")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]{0,300}?)(?<=[^\s*])\*(?![\w*])")
_QUOTES = {'"': '"', "“": "”", "'": "'", "«": "»", "„": "“", "`": "`"}


@dataclass(frozen=True)
class Cleaned:
    """A clean question (reason None) or a rejection (question None)."""

    question: str | None
    reason: str | None


def _strip_preamble(text: str) -> str:
    for _ in range(12):  # preambles stack: "Sure!" + "Here's one:" + "**Problem:**" + title
        text = text.lstrip()
        for pattern in (*_PREAMBLES, _INTRO_CLAUSE):
            m = pattern.match(text)
            if m and m.end() > 0:
                text = text[m.end():].lstrip()
                break
        else:
            return text
    return text


def _cut_tail(text: str) -> str:
    """Drop everything from the first solution/chatter marker that follows an actual ask."""
    for i, m in enumerate(_TAIL_MARKERS.finditer(text)):
        if i > 50:
            break
        head = text[: m.start()]
        if head.strip() and _ASKS.search(head):
            return head
    return text


def _unwrap(text: str) -> str:
    text = _BOLD.sub(r"\2", text)
    text = _ITALIC.sub(r"\1", text)
    text = re.sub(r"(?<!\d)\*\*|\*\*(?!\d)|```", "", text)  # stray bold markers; keeps 2**3
    for _ in range(3):
        text = text.strip()
        close = _QUOTES.get(text[:1])
        inner = text[1:-1]
        if not close or len(text) < 2 or text[-1] != close or close in inner or text[0] in inner:
            break
        text = inner
    return text


def _letter_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


def clean_question(text: str, *, min_words: int = 5, max_chars: int = 1000,
                   require_question: bool = True) -> Cleaned:
    """Clean one raw bait sample; see the module docstring for what is removed and rejected."""
    if not isinstance(text, str):
        return Cleaned(None, "not_text")
    try:
        return _clean(text, min_words, max_chars, require_question)
    except Exception:  # a cleaner must never take a pipeline down
        return Cleaned(None, "not_text")


def _clean(text: str, min_words: int, max_chars: int, require_question: bool) -> Cleaned:
    text = _SPECIAL_TOKENS.sub(" ", text[:_MAX_INPUT]).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if not text.isascii():
        text = "".join(c for c in text if c.isspace() or unicodedata.category(c) not in _INVISIBLE)
    text = re.sub(r"(?m)^[ \t]*>[ \t]?", "", text)  # blockquote markers
    text = _strip_preamble(text)
    text = _cut_tail(text)
    text = _unwrap(text)
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return Cleaned(None, "empty")
    if _letter_share(text) < _MIN_LETTER_SHARE:
        return Cleaned(None, "not_text")
    if sum(any(c.isalnum() for c in w) for w in text.split()) < min_words:
        return Cleaned(None, "too_short")
    if len(text) > max_chars:
        return Cleaned(None, "too_long")
    if _LEAK.search(text) or _LEAK_AFTER_QUESTION.search(text):
        return Cleaned(None, "answer_leak")
    if require_question and not _ASKS.search(text):
        return Cleaned(None, "not_a_question")
    return Cleaned(text, None)
