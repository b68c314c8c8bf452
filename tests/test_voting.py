"""Answer extraction, equality and majority voting on responses shaped like real chat-model output."""
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_linear
from crescent.synth import voting
from crescent.synth.voting import (INVALID_REASONS, TIE_POLICIES, Vote, answers_equal, extract_answer, is_canonical,
                                   majority_vote, parse_answer)

CANONICAL = re.compile(r"^-?\d+(\.\d+)?(/\d+)?$")

EXTRACTION = [
    # '####' marker: the authors' answer prompt ends with "#### Answer: "
    ("so she has 12 apples left. #### 12", "12"),
    ("Total: 5 + 7 = 12\n\n#### Answer: 12", "12"),
    ("The total cost is $1,250.\n#### Answer: $1,250", "1250"),
    ("#### Answer: $1,250.00", "1250"),
    ("She needs 4 boxes.\n####\n\n42", "42"),
    ("#### Answer:\n42 apples", "42"),
    ("Step 1: 3 + 4 = 7\n#### 7 apples. Step 3: done", "7"),
    ("first guess #### 3\nwait, recheck: #### 7", "7"),
    ("#### 9\nI hope this helps! #### (see above)", "9"),  # last marker has no number
    ("The perimeter is 2(8 + 5) = 26 cm.\n#### 26 cm", "26"),
    ("#### Answer: 42 cm^2", "42"),
    ("The temperature falls 12 degrees.\n#### -5", "-5"),
    ("#### −7", "-7"),  # unicode minus
    ("#### –3", "-3"),  # en dash as minus
    ("#### 12.50", "12.5"),
    ("#### 0.50", "0.5"),
    ("#### 5.0", "5"),
    ("#### -0", "0"),
    ("#### 45%", "45"),
    ("#### 1,234,567.890", "1234567.89"),
    ("#### 1 250", "1250"),
    ("#### １２３", "123"),  # fullwidth digits
    ("#### ٣٤", "34"),  # Arabic-Indic digits
    ("#### 3/4", "0.75"),
    ("#### 1/3", "1/3"),
    ("#### 2/6", "1/3"),
    ("#### 2 1/2 cups", "2.5"),
    ("#### 1e3", "1000"),
    ("#### Answer: 2x + 3 = 11", "11"),
    ("#### \\frac{7}{8}", "0.875"),
    # \boxed (Qwen style)
    ("So the probability is $\\boxed{\\frac{3}{4}}$.", "0.75"),
    ("$\\boxed{\\dfrac{1}{3}}$", "1/3"),
    ("$\\boxed{-\\tfrac{5}{2}}$", "-2.5"),
    ("$\\boxed{2\\frac{1}{2}}$", "2.5"),
    ("First \\boxed{5}, corrected: \\boxed{6}", "6"),
    ("The final answer is $\\boxed{1{,}250}$", "1250"),
    ("\\boxed{\\text{\\$}18.00}", "18"),
    ("\\boxed{x = 4}", "4"),
    ("\\boxed{1.5 \\times 10^{3}}", "1500"),
    ("\\boxed{42 \\text{ cm}^2}", "42"),
    ("Therefore the total is $\\boxed{18}$.\n\nNote: I checked this with 2 methods.", "18"),
    ("The answer is 5? No, recount.\n$\\boxed{6}$ (3 checks done)", "6"),  # boxed beats "answer is"
    # "The answer is" (LMSI style)
    ("Roger started with 5 balls. 5 + 6 = 11. The answer is 11.", "11"),
    ("There are 3 cars, 2 more arrive. The answer is 5. Q: next one has 9", "5"),
    ("Thus, the final answer is 18 dollars.", "18"),
    ("The answer is: **42** apples", "42"),
    ("The answer is \\(\\frac{7}{8}\\)", "0.875"),
    # last-number fallback
    ("Janet sells 16 - 3 - 4 = 9 eggs, so she makes 9 * 2 = $18 every day.", "18"),
    ("The area of the room is 42 cm^2", "42"),
    ("After the sale, the price is $-3.50 net", "-3.5"),
    ("Pages 5–7 were read", "7"),
    ("x^2 - 9 = 0 gives 3 as the positive root, then x^2", "3"),
    ("Result: 18\nStep 3:", "18"),
    ("The bill is **$1,250**.", "1250"),
    ("He has 4 500-page books", "500"),  # no space-grouping outside an answer marker
    # no answer
    ("", None),
    ("   \n\t ", None),
    ("I am not sure how to solve this problem.", None),
    ("#### NaN", None),
    ("#### inf", None),
    ("\\boxed{\\infty}", None),
    ("The answer is 3/0", None),
    ("1e999", None),
    ("\x00\x01\x02", None),
]


@pytest.mark.parametrize("text,expected", EXTRACTION)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extraction_cases_are_many():
    assert len(EXTRACTION) >= 40


@pytest.mark.parametrize("text", [None, 42, b"#### 5", ["#### 5"]])
def test_extract_answer_non_string_is_none(text):
    assert extract_answer(text) is None


def test_extract_answer_100kb_finds_marker_in_linear_time():
    text = "Let me think about this carefully. " * 3000 + "#### 7"
    assert len(text) > 100_000
    assert extract_answer(text) == "7"
    assert extract_answer("9" * 100_000) is None  # absurd digit run is not an answer
    assert extract_answer("\\boxed{" * 20_000) is None
    assert extract_answer("1 " * 50_000) == "1"
    for unit, n in (("Let me think about this carefully. ", 300), ("9", 10_000), ("\\boxed{", 2_000), ("1 ", 5_000)):
        assert_linear(extract_answer, unit * n, unit * (10 * n))  # time relative to a 10x shorter text


def test_injection_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    canary = tmp_path / "pwned_x"
    payload = "__import__('os').system('touch pwned_x')"
    voting._math_verify_equal.cache_clear()
    seen = []
    import math_verify

    real_parse = math_verify.parse
    monkeypatch.setattr(math_verify, "parse", lambda s, **kw: seen.append(s) or real_parse(s, **kw))
    texts = [f"\\boxed{{{payload}}}", f"#### {payload}", f"#### Answer: {payload}",
             f"The answer is {payload}", payload, f"\\boxed{{{payload} + 1/3}}"]
    answers = [extract_answer(t) for t in texts]
    assert answers[:5] == [None] * 5
    assert not answers_equal(payload, payload + " ")
    assert not answers_equal(payload, "0.5")
    assert answers[5] == "1/3"
    assert answers_equal(answers[5], "0.333333")  # reaches math_verify, with canonical strings
    majority_vote([payload, payload, "1"])
    assert not canary.exists()
    assert seen and all(CANONICAL.match(s) for s in seen)  # math_verify only ever sees validated numbers


@pytest.mark.parametrize("s", ["0", "12", "-12", "12.5", "0.05", "-0.5", "1/3", "-2/3", "602000000000000000000000"])
def test_is_canonical(s):
    assert is_canonical(s) and extract_answer(f"#### {s}") == s


@pytest.mark.parametrize("s", ["-0", "+5", "012", "12.50", "12.", ".5", "1/2", "2/6", "3/1", "0/3", "1.5/2", "1e5",
                               " 1", "1,000", "٣", "−5", "", None, 5, "0.0", "-0.0"])
def test_is_not_canonical(s):
    assert not is_canonical(s)


# pieces of hostile output: unicode digits and minus signs, LaTeX, markers, grouping, exponents, code
HOSTILE = st.sampled_from([
    "#### ", "####", "\\boxed{", "}", "{", "\\frac{", "\\dfrac", "\\sqrt{", "\\pi", "π", "√", "^", "**", "e",
    "E-", "× 10^", "The answer is ", "Answer: ", "=", " ", "\n", ",", ".", "/", "%", "$", "-", "−", "‒", "–",
    "－", "+", "٣", "３", "۴", "४", "𝟒", "⁴", "0", "1", "7", "000", "nan", "inf", "∞", "\\infty", "undefined",
    "__import__('os').system('touch x')", "eval(", "${", "{{", "}}", "%(x)s", "`", "$(", "\x1b[31m", "\u200b",
])


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(),
    st.text(alphabet="0123456789#$,./-−–{}\\ boxedfracinftyanswerisAnswer:%e^x×\n", max_size=200),
    st.lists(HOSTILE, max_size=40).map("".join),
))
def test_extract_answer_never_raises_and_is_canonical(text):
    parsed = parse_answer(text)
    assert (parsed.value is None) != (parsed.reason is None)
    assert parsed.reason in (None, *INVALID_REASONS) and parsed.reason != "error"
    if parsed.value is not None:
        assert is_canonical(parsed.value) and CANONICAL.match(parsed.value)
        assert extract_answer(f"#### {parsed.value}") == parsed.value  # canonical answers read back unchanged


@settings(max_examples=200, deadline=None)
@given(st.fractions(max_denominator=10**6).filter(lambda f: abs(f) < 10**12))
def test_extract_round_trips_canonical_numbers(value):
    canonical = extract_answer(f"#### {value}")
    assert canonical is not None and Fraction(canonical) == value
    assert extract_answer(f"#### {canonical}") == canonical


@pytest.mark.parametrize("a,b,equal", [
    ("12", "12", True),
    ("12", "12.0", True),
    ("0.75", "3/4", True),
    ("1250", "1,250", True),  # non-canonical input is canonicalised first
    ("-0", "0", True),
    ("1/3", "0.333333", True),  # math_verify's rounding tolerance
    ("2/3", "0.67", False),
    ("45", "0.45", False),
    ("1000000", "1000001", False),
    ("12", "12.0001", False),
    ("5", "-5", False),
    (None, None, False),
    (None, "5", False),
    ("5", None, False),
    ("", "", False),
])
def test_answers_equal(a, b, equal):
    assert answers_equal(a, b) is equal
    assert answers_equal(b, a) is equal


def test_majority_vote_basic_agreement():
    v = majority_vote(["12", "12.0", "13", None])
    assert v == Vote(answer="12", count=2, k=4, n_valid=3, n_invalid=1, agreement=0.5, tied=False, reason=None)


def test_majority_vote_unanimous():
    v = majority_vote(["0.75", "3/4", "0.75"])
    assert (v.answer, v.count, v.agreement, v.tied) == ("0.75", 3, 1.0, False)


@pytest.mark.parametrize("answers", [[], [None], [None, None, None], ["", "  ", None]])
def test_majority_vote_no_valid_answer(answers):
    v = majority_vote(answers)
    assert v.answer is None and v.reason == "no_valid_answer"
    assert (v.count, v.agreement, v.n_valid, v.n_invalid, v.k) == (0, 0.0, 0, len(answers), len(answers))


def test_none_never_wins():
    v = majority_vote([None, None, None, "7"])
    assert (v.answer, v.count, v.agreement, v.n_invalid) == ("7", 1, 0.25, 3)


def test_tie_first_picks_earliest_first_occurrence():
    v = majority_vote(["5", "9", "9", "5", None])
    assert (v.answer, v.tied, v.count, v.reason) == ("5", True, 2, None)
    assert majority_vote(["9", "5", "5", "9"]).answer == "9"


def test_tie_drop():
    v = majority_vote(["5", "9"], tie="drop")
    assert (v.answer, v.reason, v.tied, v.count, v.agreement) == (None, "tie", True, 0, 0.0)
    assert majority_vote(["5", "5", "9"], tie="drop").answer == "5"  # no tie, nothing dropped


def test_tie_random_is_seeded_and_covers_tied_answers():
    answers = ["1", "2", "3", "4"]
    picks = {majority_vote(answers, tie="random", seed=s).answer for s in range(50)}
    assert picks == set(answers)
    assert majority_vote(answers, tie="random", seed=3) == majority_vote(answers, tie="random", seed=3)
    assert majority_vote(["1", "1", "2"], tie="random", seed=5).answer == "1"


@pytest.mark.parametrize("bad", ["last", "", "FIRST", None])
def test_unknown_tie_policy_names_allowed_values(bad):
    with pytest.raises(ValueError, match="first.*random.*drop"):
        majority_vote(["1"], tie=bad)


def test_tie_policies_constant():
    assert TIE_POLICIES == ("first", "random", "drop")


def test_vote_is_frozen():
    with pytest.raises(AttributeError):
        majority_vote(["1"]).answer = "2"


def test_end_to_end_responses():
    responses = [
        "She buys 3 packs of 4, so 3 * 4 = 12 pens.\n#### Answer: 12",
        "3 packs × 4 pens = 12 pens. The answer is 12.",
        "I think it is $\\boxed{11}$",
        "I cannot determine this.",
    ]
    v = majority_vote([extract_answer(r) for r in responses])
    assert (v.answer, v.count, v.n_invalid, v.agreement) == ("12", 2, 1, 0.5)


def test_module_never_imports_eval_helpers():
    source = open(voting.__file__).read()
    for banned in ("eval(", "exec(", "sympify(", "parse_expr(", "parse_latex("):
        assert banned not in source
