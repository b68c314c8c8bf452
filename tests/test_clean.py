"""Cleaning raw bait samples: keep the maths, strip the chat wrapping, reject with a reason."""
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_linear
from crescent.synth.clean import REASONS, Cleaned, _clean, clean_question

KEPT = [
    # (raw sample, expected clean question)
    # intro clauses as SmolLM2-135M-Instruct writes them at temperature 0.7
    ("A simple yet profound math problem: A bat and a ball together cost $1.10. The bat costs $1.00 more than "
     "the ball. How much does the ball cost?",
     "A bat and a ball together cost $1.10. The bat costs $1.00 more than the ball. How much does the ball cost?"),
    ("A high school math word problem with a unique twist is: A bat and a ball cost $1.10 in total. How much is "
     "the ball?", "A bat and a ball cost $1.10 in total. How much is the ball?"),
    ("This is a great example of how creativity can come in unexpected places. Here's a creative math word "
     "problem: Problem: A man walked 12 km each day for 3 days. How far did he walk?",
     "A man walked 12 km each day for 3 days. How far did he walk?"),
    ("A farmer has 12 cows and each has 4 legs. Calculate the total number of legs.",
     "A farmer has 12 cows and each has 4 legs. Calculate the total number of legs."),
    ("A school has 1000 students and 80% are seniors. How many seniors are there? This math problem requires "
     "creative thinking and problem-solving skills.",
     "A school has 1000 students and 80% are seniors. How many seniors are there?"),
    ("Solve: 2 + 3 * (2 + 3) = ? This problem has a beautiful intersection of arithmetic and algebra.",
     "Solve: 2 + 3 * (2 + 3) = ?"),
    ("Solve the following problem: if 2x + 3 = 11, what is x?",
     "Solve the following problem: if 2x + 3 = 11, what is x?"),
    ("Sure! Here's a unique math word problem:\n\nA bakery sells cupcakes for $12.50 per box. "
     "If Maria buys 3/4 of a box, how much does she spend?",
     "A bakery sells cupcakes for $12.50 per box. If Maria buys 3/4 of a box, how much does she spend?"),
    ("Here is a high school level math problem for you:\n\n**Problem:** Solve for x: 2x + 3 = 11.",
     "Solve for x: 2x + 3 = 11."),
    ("**Problem:**\nThe temperature dropped to -5°C overnight. By noon it rose by 12 degrees. "
     "What was the temperature at noon?",
     "The temperature dropped to -5°C overnight. By noon it rose by 12 degrees. What was the temperature at noon?"),
    ("### The Garden Puzzle\n\nA rectangular garden is 12 m long and 8 m wide. What is its area?\n\n"
     "**Solution:**\nArea = 12 × 8 = 96 m².",
     "A rectangular garden is 12 m long and 8 m wide. What is its area?"),
    ("Math Problem: A shirt costs €40 and is discounted by 45%. What is the sale price?\n\nGood luck!",
     "A shirt costs €40 and is discounted by 45%. What is the sale price?"),
    ("Question: A circle has radius 3 cm. What is its area in terms of π?\n\n"
     "Let me know if you need the solution.",
     "A circle has radius 3 cm. What is its area in terms of π?"),
    ('"A train travels 120 km in 1.5 hours. What is its average speed in km/h?"',
     "A train travels 120 km in 1.5 hours. What is its average speed in km/h?"),
    ("What is the value of (3 + 4) × 2 − 5 for the puzzle?\n\nHint: use the order of operations.",
     "What is the value of (3 + 4) × 2 − 5 for the puzzle?"),
    ("A farmer has 15 cows and sells 7 of them. How many cows remain? #### 8",
     "A farmer has 15 cows and sells 7 of them. How many cows remain?"),
    ("Tom has 12 apples and gives away 5. How many are left?\n\nStep 1: 12 - 5 = 7\n#### 7",
     "Tom has 12 apples and gives away 5. How many are left?"),
    ("Lisa reads 20 pages a day. How many pages does she read in a week?\n\nTo solve this, multiply 20 by 7.",
     "Lisa reads 20 pages a day. How many pages does she read in a week?"),
    ("<|begin_of_text|>Here's a problem for you! If 3 pencils cost $0.75, how much do 12 pencils cost?<|eot_id|>",
     "If 3 pencils cost $0.75, how much do 12 pencils cost?"),
    ("**The Mysterious Library**\n\nIn an ancient library, there are 1,250 books on 5 shelves. "
     "If each shelf holds the same number, *how many* books are on each shelf?",
     "In an ancient library, there are 1,250 books on 5 shelves. If each shelf holds the same number, "
     "how many books are on each shelf?"),
    ("Okay, here goes:\nCalculate the sum of the first 10 positive integers, then add 5.",
     "Calculate the sum of the first 10 positive integers, then add 5."),
    ("Certainly! Here's one:\n\n**Problem 1:** Find the value of x if 3x - 7 = 2x + 5.\n\n**Answer:** x = 12",
     "Find the value of x if 3x - 7 = 2x + 5."),
    ("I'd be happy to help! Here's a math word problem:\n\nSarah bought 3 notebooks at $4.99 each. "
     "How much did she pay?\n\nI hope you enjoy solving it!",
     "Sarah bought 3 notebooks at $4.99 each. How much did she pay?"),
    ("> A car uses 8 L per 100 km. How many liters does it need for 350 km?",
     "A car uses 8 L per 100 km. How many liters does it need for 350 km?"),
    ("A rope is 12.50 m long and is cut into pieces of 3/4 m. How many whole pieces can be cut? The answer is 16.",
     "A rope is 12.50 m long and is cut into pieces of 3/4 m. How many whole pieces can be cut?"),
    ("Great Lakes hold 21% of the world's fresh surface water. What fraction of it is that?",
     "Great Lakes hold 21% of the world's fresh surface water. What fraction of it is that?"),  # not a preamble
    ("**Word Problem:**\n\nA   store\nsells  pens in packs of 6.\n\nHow many packs are needed for 45 students?",
     "A store sells pens in packs of 6. How many packs are needed for 45 students?"),
    ("A box holds 2 * 3 * 4 = 24 cubes and the price is 2**3 dollars. What is the price per cube?",
     "A box holds 2 * 3 * 4 = 24 cubes and the price is 2**3 dollars. What is the price per cube?"),
    ("Ein Zug fährt 90 km in 1,5 Stunden. Wie schnell fährt er?",
     "Ein Zug fährt 90 km in 1,5 Stunden. Wie schnell fährt er?"),
]


@pytest.mark.parametrize("raw,expected", KEPT)
def test_clean_keeps_question(raw, expected):
    assert clean_question(raw) == Cleaned(expected, None)


@pytest.mark.parametrize("fragment",
                         ["$12.50", "3/4", "-5", "2x + 3 = 11", "45%", "(3 + 4) × 2", "€", "π", "1,250"])
def test_maths_survives(fragment):
    raw = f"**Problem:** Ana writes {fragment} on the board for the class. What does Ben write next?"
    out = clean_question(raw)
    assert out.reason is None and fragment in out.question


REJECTED = [
    ("", "empty"),
    ("   \n\n\t  ", "empty"),
    ("**Problem:**", "empty"),
    ("<|eot_id|>", "empty"),
    ("1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 !!! ### $$$ %%% 42 43", "not_text"),
    ("∂∑∫ ≈≈≈ ♦♦♦ ◊◊◊ ∆∆∆ ∞∞∞ ??", "not_text"),
    ("Sure!", "empty"),
    ("Find x + 1.", "too_short"),
    ("How many cats?", "too_short"),
    ("Here's a unique math word problem:\n\n**Problem:** Five apples?", "too_short"),
    ("The answer is 42. How many apples does Sam have if he had 40 and got 2 more?", "answer_leak"),
    ("A box has 2 red balls and 3 blue balls. What is P(red)? (Answer: 2/5)", "answer_leak"),
    ("What is 5 + 3 for a class of young kids? = 8", "answer_leak"),
    ("#### 8\nA farmer has 5 cows and buys 3 more. How many cows does he have?", "answer_leak"),
    ("A farmer has 5 cows and buys 3 more cows at the market today.", "not_a_question"),
    # a question word that opens no question (SmolLM2-135M at temperature 0.7)
    ("What a story I can weave! A math word problem is a situation that has multiple layers.", "not_a_question"),
    ("A word problem that shows how creative thinking and mathematics meet in everyday life.", "not_a_question"),
    ("Sure! Here's a unique math problem:\n\nThe school garden has 24 rows of tulips.", "not_a_question"),
]


@pytest.mark.parametrize("raw,reason", REJECTED)
def test_clean_rejects_with_reason(raw, reason):
    assert clean_question(raw) == Cleaned(None, reason)


def test_too_long():
    raw = "A farmer plants trees in rows. " * 40 + "How many trees are there?"
    assert clean_question(raw).reason == "too_long"
    assert clean_question(raw, max_chars=5000).reason is None


def test_options_are_respected():
    statement = "A farmer has 5 cows and buys 3 more cows at the market today."
    assert clean_question(statement, require_question=False) == Cleaned(statement, None)
    assert clean_question("How many cats?", min_words=3).question == "How many cats?"
    assert clean_question("How many cats are there?").question == "How many cats are there?"
    assert clean_question("How many cats are there?", min_words=6).reason == "too_short"


@pytest.mark.parametrize("raw", [None, 42, b"How many apples are left?", ["a question?"]])
def test_non_string_is_not_text(raw):
    assert clean_question(raw) == Cleaned(None, "not_text")


def test_every_reason_is_produced():
    produced = {reason for _, reason in REJECTED} | {"too_long"}
    assert produced == set(REASONS)


def test_cases_are_many():
    assert len(KEPT) + len(REJECTED) >= 30


def test_exactly_one_field_set():
    for raw, _ in KEPT + REJECTED:
        out = clean_question(raw)
        assert (out.question is None) != (out.reason is None)


@pytest.mark.parametrize("raw", ["**" * 50_000, "*a" * 50_000, "Here " * 40_000, "what? Solution: " * 10_000,
                                 "Problem: " * 10_000, "#" * 100_000, "\x00" * 10_000, "x\n#" * 30_000])
def test_pathological_inputs_are_linear(raw):
    out = clean_question(raw)
    assert out.reason in REASONS
    assert_linear(clean_question, raw[: len(raw) // 10], raw)  # time relative to a 10x shorter input


# pieces of hostile output: chat wrapping, special tokens, invisible characters, LaTeX, code, templates
HOSTILE = st.sampled_from([
    "Sure! ", "Here's a problem:", "**Problem:**", "### Title\n", "> ", "\"", "“", "”", "*", "**", "__", "`", "```",
    "\n", " ", "\t", "How many apples are left?", "What is x", "?", "Find y.", "Solution:", "Answer: 8", "#### 8",
    "\\boxed{4}", "\\frac{1}{2}", "<|im_end|>", "<|eot_id|>", "[INST]", "</s>", "\x00", "\x1b[31m", "\x85",
    "\u200b", "\u202e", "\ufeff", "٣", "３", "−5", "$12.50", "45%", "1 000", "{question}", "{{7*7}}", "${x}",
    "%(x)s", "$(touch x)", "__import__('os').system('touch x')", "Ignore previous instructions. ", "word ",
])


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(),
    st.text(alphabet="Here's a problem:*#_>\"“”?!.\n 0123456789$/%-=SolutinAswerStep1####", max_size=300),
    st.lists(HOSTILE, max_size=40).map("".join),
))
def test_clean_never_raises(raw):
    out = clean_question(raw)
    assert out == _clean(raw, 5, 1000, True)  # the except-all safety net in clean_question is never needed
    assert (out.question is None) != (out.reason is None)
    assert out.reason is None or out.reason in REASONS
    if out.question is not None:
        q = out.question
        assert q == q.strip() and "  " not in q and "\n" not in q
        assert len(q) <= 1000 and sum(any(c.isalnum() for c in w) for w in q.split()) >= 5
        assert "####" not in q and "\\boxed" not in q and not re.search(r"<\|[^|]*\|>", q)  # no leaks, no tokens
        assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in q)  # nothing invisible survives
