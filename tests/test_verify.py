"""Self-verification: verdict parsing, filters, each verifier's logic with a scripted judge, the configs,
and every verifier on the random tiny Llama (shapes, ranges, determinism, invalid verdicts)."""
import math
import re

import numpy as np
import pytest

from helpers import compose_cfg
from crescent.backends.base import SamplingParams
from crescent.verify import HFJudge, verify_errors, verify_samples
from crescent.verify.filters import keep_mask, quantile
from crescent.verify.judge import _plan
from crescent.verify.parse import parse_binary, parse_choice, parse_score
from crescent.verify.verifiers import clip, fill

VERIFIERS = ("none", "mc", "cot_binary", "cot_score", "tournament", "all_of")


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize("text,expected", [
    ("Check: 3 * 4 = 12.\nVerdict: correct", (True, None)),
    ("Verdict: **Incorrect**", (False, None)),
    ("verdict - not correct", (False, None)),
    ("Verdict: correct\n\nQuestion: next\nVerdict: incorrect", (True, None)),  # the first verdict wins
    ("The answer is wrong because 2 + 5 is not 10.", (False, None)),
    ("So the answer is not correct.", (False, None)),
    ("Everything checks out, it is correct", (True, None)),
    ("This is correct.", (True, None)),
    ("This looks incorrect.", (False, None)),
    ("correct in part but wrong at the end", (None, "ambiguous")),
    ("12 - 2 = 10", (None, "no_verdict")),
    ("   ", (None, "empty")),
    (None, (None, "empty")),
])
def test_parse_binary(text, expected):
    assert parse_binary(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Check: fine.\nScore: 7", (7.0, None)),
    ("**Score:** 9/10", (9.0, None)),
    ("the score is 3.5", (3.5, None)),
    ("I would give it 8/10 overall.", (8.0, None)),
    ("I rate it 6 out of 10", (6.0, None)),
    ("Score: 11", (None, "out_of_range")),
    ("Score: 0", (None, "out_of_range")),
    ("Score: -3", (None, "out_of_range")),
    ("The total is 16", (None, "no_score")),
    ("", (None, "empty")),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Check: ...\nBetter: B", ("B", None)),
    ("The better answer is (A)", ("A", None)),
    ("better response: B", ("B", None)),
    ("Answer B is better.", ("B", None)),
    ("Better: a", (None, "no_choice")),  # lower-case a is an article, not a choice
    ("Both are fine", (None, "no_choice")),
    ("", (None, "empty")),
])
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


def test_fill_is_literal_and_clip_keeps_both_ends():
    assert fill("{question} {x} {{y}} {response}", question="Q {response}", response="R") == "Q {response} {x} {{y}} R"
    text = "start " + "x" * 100 + " end"
    clipped = clip(text, 20)
    assert clipped.startswith("start") and clipped.endswith("end") and " ... " in clipped
    assert clip("  short  ", 20) == "short" and clip("abc", None) == "abc"


# ---------------------------------------------------------------- filters

def test_quantile_matches_numpy():
    rng = np.random.default_rng(0)
    for _ in range(100):
        xs = rng.random(rng.integers(1, 10)).tolist()
        q = float(rng.random())
        assert quantile(xs, q) == pytest.approx(np.quantile(xs, q))


def test_threshold_filter_rejects_invalid_and_low_scores():
    kept, reasons, cut = keep_mask([0.9, 0.5, 0.2, 0.0], [True, True, True, False], "threshold", threshold=0.5)
    assert kept == [True, True, False, False]
    assert reasons == [None, None, "below_threshold", "invalid"] and cut == 0.5


def test_quantile_filter_per_question():
    scores = [0.1, 0.4, 0.4, 0.8, 1.0]
    kept, reasons, cut = keep_mask(scores, [True] * 5, "quantile", q=0.5)
    assert cut == 0.4 and kept == [False, True, True, True, True]  # ties at the cut are kept
    assert keep_mask(scores, [True] * 5, "quantile", q=0.0)[0] == [True] * 5
    assert keep_mask(scores, [True] * 5, "quantile", q=1.0)[0] == [False] * 4 + [True]
    # the quantile is over valid scores only; an invalid sample is rejected even with a high score
    kept, reasons, cut = keep_mask([0.0, 0.2, 0.9], [False, True, True], "quantile", q=0.0)
    assert cut == 0.2 and kept == [False, True, True] and reasons[0] == "invalid"
    assert keep_mask([0.0, 0.0], [False, False], "quantile", q=0.5) == ([False, False], ["invalid", "invalid"], None)
    with pytest.raises(ValueError, match="filter="):
        keep_mask([1.0], [True], "top_k")


# ---------------------------------------------------------------- scripted judge: pure logic

class ScriptedJudge:
    """Generation answers from `script(prompt) -> text`; log-likelihoods from `ll(context, continuation)`."""

    def __init__(self, script=None, ll=None):
        self.script, self.ll, self.calls = script, ll, []

    def generate(self, prompts, params, seed):
        self.calls.append((list(prompts), params, seed))
        return [[self.script(p)] * params.n for p in prompts]

    def loglik(self, requests):
        return [self.ll(c, x) for c, x in requests]


def _items():
    return [{"id": "q0", "question": "What is 2 + 2?", "responses": ["2 + 2 = 4 #### 4", "2 + 2 = 5 #### 5", "I dunno"],
             "answers": ["4", "5", None]},
            {"id": "q1", "question": "What is 3 * 3?", "responses": ["3 * 3 = 9 #### 9"], "answers": ["9"]}]


def _last_response(prompt):
    return prompt.rsplit("Proposed answer:", 1)[1]


def _cfg(name, **over):
    cfg = compose_cfg([f"verify={name}"]).verify
    for k, v in over.items():
        cfg[k] = v
    return cfg


def test_none_keeps_everything():
    res = verify_samples(None, _items(), _cfg("none"))
    assert res.kept == [[True, True, True], [True]] and res.scores == [[None] * 3, [None]]
    assert res.rejections == [] and res.counts == {"verifier": "none", "samples": 4, "kept": 4, "rejected": 0,
                                                   "kept_fraction": 1.0, "rejected_by_reason": {}}


def test_cot_binary_scores_invalid_and_rejections():
    def script(p):
        r = _last_response(p)
        return "Check: ok\nVerdict: correct" if "= 4" in r or "= 9" in r else ("Verdict: incorrect" if "5" in r else "hmm")

    res = verify_samples(ScriptedJudge(script), _items(), _cfg("cot_binary"), seed=0)
    assert res.scores == [[1.0, 0.0, 0.0], [1.0]]
    assert res.kept == [[True, False, False], [True]]
    assert [(r["id"], r["sample"], r["reasons"]) for r in res.rejections] == [
        ("q0", 1, ["below_threshold"]), ("q0", 2, ["invalid:no_verdict"])]
    assert res.rejections[1]["answer"] is None and res.rejections[1]["judge"] == "hmm"
    c = res.counts
    assert (c["samples"], c["kept"], c["rejected"], c["invalid"]) == (4, 2, 2, 1)
    assert c["rejected_by_reason"] == {"below_threshold": 1, "invalid:no_verdict": 1}
    assert res.details[0][2]["valid"] is False and res.details[0][2]["reason"] == "invalid:no_verdict"


def test_cot_binary_uses_the_configured_decoding_and_prompt():
    judge = ScriptedJudge(lambda p: "Verdict: correct")
    verify_samples(judge, _items(), _cfg("cot_binary", chunk=2, format="chat"), seed=3)
    prompts, params, _ = judge.calls[0]
    assert len(judge.calls) == 2 and sum(len(c[0]) for c in judge.calls) == 4  # 4 samples in chunks of 2
    assert params == SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=160,
                                    stop=("\n\nQuestion:", "\nQuestion:"))
    assert prompts[0][0]["role"] == "user" and "Question: What is 2 + 2?\nProposed answer: 2 + 2 = 4 #### 4\nCheck:" in \
        prompts[0][0]["content"]


def test_cot_score_normalises_and_flags_out_of_range():
    scores = {"4": "Score: 10", "5": "Score: 1", "dunno": "Score: 12", "9": "score: 5.5/10"}

    def script(p):
        r = _last_response(p)
        return next(v for k, v in scores.items() if k in r.split("####")[-1] or k in r)

    res = verify_samples(ScriptedJudge(script), _items(), _cfg("cot_score"))
    assert res.scores == [[1.0, 0.0, 0.0], [0.5]]
    assert res.kept == [[True, False, False], [True]]  # 0.5 >= threshold 0.5
    assert res.details[0][2]["reason"] == "invalid:out_of_range" and res.details[1][0]["extra"]["raw_score"] == 5.5


def test_mc_is_normalised_probability():
    def ll(ctx, cont):
        good = "= 4" in _last_response(ctx)
        return {(True, " Correct"): math.log(0.6), (True, " Incorrect"): math.log(0.2),
                (False, " Correct"): math.log(0.1), (False, " Incorrect"): math.log(0.3)}[(good, cont)]

    res = verify_samples(ScriptedJudge(ll=ll), _items(), _cfg("mc"))
    assert res.scores[0] == pytest.approx([0.75, 0.25, 0.25]) and res.scores[1] == pytest.approx([0.25])
    assert res.kept == [[True, False, False], [False]] and res.counts["invalid"] == 0
    # a per-question quantile keeps the question's best even when all scores are low
    res = verify_samples(ScriptedJudge(ll=ll), _items(), _cfg("mc", filter="quantile", quantile=0.9))
    assert res.kept == [[True, False, False], [True]]


def _number_judge(invalid_when=None):
    """Prefers the response with the larger number; says nothing parseable when `invalid_when(a, b)`."""
    def script(p):
        a = int(re.search(r"Answer A: (\d+)", p.rsplit("Question:", 1)[1]).group(1))
        b = int(re.search(r"Answer B: (\d+)", p.rsplit("Question:", 1)[1]).group(1))
        if invalid_when and invalid_when(a, b):
            return "both fine"
        return "Check: ...\nBetter: " + ("A" if a > b else "B")
    return script


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_tournament_scores_are_rounds_survived(n):
    values = [(7 * i + 3) % 11 for i in range(n)]  # distinct
    items = [{"id": 0, "question": "Q", "responses": [str(v) for v in values], "answers": [None] * n}]
    res = verify_samples(ScriptedJudge(_number_judge()), items, _cfg("tournament"), seed=1)
    scores = res.scores[0]
    rounds = math.ceil(math.log2(n)) if n > 1 else 0
    best = values.index(max(values))
    assert scores[best] == 1.0 and res.kept[0] == [i == best for i in range(n)]  # threshold 1.0: the champion
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(d["extra"]["rounds"] == rounds for d in res.details[0])
    matches = sum(len(d["extra"]["matches"]) for d in res.details[0]) // 2
    assert matches == n - 1  # a knockout plays n - 1 matches
    if n == 8:  # a full bracket: 4 first-round losers at 0, 2 at 1/3, 1 at 2/3, the champion at 1
        assert sorted(scores) == pytest.approx([0, 0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])


def test_tournament_invalid_verdicts_are_coin_flips_recorded_and_deterministic():
    items = [{"id": 0, "question": "Q", "responses": ["1", "2", "3", "4"], "answers": [None] * 4}]
    judge = ScriptedJudge(_number_judge(invalid_when=lambda a, b: True))
    a = verify_samples(judge, items, _cfg("tournament", threshold=0.5), seed=5)
    b = verify_samples(judge, items, _cfg("tournament", threshold=0.5), seed=5)
    assert a.scores == b.scores and sorted(a.scores[0]) == [0.0, 0.0, 0.5, 1.0]
    assert all(m["invalid"] == "no_choice" for d in a.details[0] for m in d["extra"]["matches"])
    assert a.counts["invalid"] == 0  # the samples stay valid; the matches record the invalid verdicts


def test_tournament_swaps_positions():
    items = [{"id": i, "question": "Q", "responses": ["1", "2"], "answers": [None] * 2} for i in range(40)]
    judge = ScriptedJudge(_number_judge())
    res = verify_samples(judge, items, _cfg("tournament"), seed=0)
    assert all(r == [0.0, 1.0] for r in res.scores)  # the larger number always wins, whatever its position
    firsts = {re.search(r"Answer A: (\d)", p.rsplit("Question:", 1)[1]).group(1) for p in judge.calls[0][0]}
    assert firsts == {"1", "2"}


def test_all_of_is_an_and_with_member_thresholds():
    def script(p):  # cot_score: 4 -> 10, 5 -> 8, else unparseable
        r = _last_response(p)
        return "Score: 10" if "= 4" in r else ("Score: 8" if "= 5" in r or "= 9" in r else "??")

    def ll(ctx, cont):  # mc: p(correct) 0.9 for "= 4", 0.2 otherwise
        good = "= 4" in _last_response(ctx)
        return math.log(0.9 if good else 0.2) if cont == " Correct" else math.log(0.1 if good else 0.8)

    cfg = compose_cfg(["verify=all_of", "verify.verifiers.mc.threshold=0.15",
                       "verify.verifiers.cot_score.threshold=0.8"]).verify
    res = verify_samples(ScriptedJudge(script, ll), _items(), cfg, seed=0)
    # mc keeps all (0.9, 0.2, 0.2 | 0.2 >= 0.15); cot_score keeps 10 and 8 (>= 0.8 -> 1.0, 0.78) -> only "= 4"
    assert res.kept == [[True, False, False], [False]]
    assert res.scores[0] == pytest.approx([0.9, 0.2, 0.0])  # the minimum over members
    assert res.rejections[0]["reasons"] == ["cot_score:below_threshold"]
    assert res.rejections[1]["reasons"] == ["cot_score:invalid:no_score"]
    pv = res.counts["per_verifier"]
    assert pv["mc"]["kept"] == 4 and pv["cot_score"]["kept"] == 1 and pv["cot_score"]["invalid"] == 1
    assert res.counts["kept"] == 1 and res.counts["invalid"] == 1
    assert set(res.details[0][0]["members"]) == {"mc", "cot_score"}
    cfg.verifiers.mc.threshold = 0.95  # now mc rejects "= 4" too: AND keeps nothing
    assert verify_samples(ScriptedJudge(script, ll), _items(), cfg).counts["kept"] == 0


# ---------------------------------------------------------------- configs

@pytest.mark.parametrize("name", VERIFIERS)
def test_shipped_verify_configs_are_valid(name):
    cfg = compose_cfg([f"verify={name}"])
    assert cfg.verify.name == name and verify_errors(cfg.verify) == []


def test_verify_config_errors_name_key_value_and_allowed():
    errors = verify_errors(_cfg("cot_score", threshold=1.5, filter="best", prompt="no fields", score_max=0))
    text = "\n".join(errors)
    assert "verify.threshold=1.5 is invalid: expected a number in [0.0, 1.0]" in text
    assert "verify.filter='best' is invalid: expected one of ['threshold', 'quantile']" in text
    assert "verify.prompt='no fields' is invalid: expected a string containing {question} and {response}" in text
    assert verify_errors({"name": "oracle"}) == [
        "  verify.name='oracle' is invalid: expected one of ['none', 'mc', 'cot_binary', 'cot_score', 'tournament', 'all_of']"]
    nested = compose_cfg(["verify=all_of", "verify.verifiers.mc.positive=''"]).verify
    assert verify_errors(nested) == ["  verify.verifiers.mc.positive='' is invalid: expected a non-empty string"]
    assert "expected a number > score_min" in "\n".join(verify_errors(_cfg("cot_score", score_min=5, score_max=5)))


def test_plan_shares_one_forward_between_correct_and_incorrect():
    # " Correct" = [7] and " Incorrect" = [8, 9]: one pass over context + [8, 9] scores both
    groups = {(1, 2, 3): [(0, [7]), (1, [8, 9])], (4,): [(2, [5, 6]), (3, [5, 7]), (4, [5]), (5, [6, 6])]}
    passes = _plan(groups)
    assert passes[0] == ([1, 2, 3, 8, 9], [(1, 3, [8, 9]), (0, 3, [7])])
    # [5, 7] and [5] are read from the pass over [5, 6] (same tokens before their last); [6, 6] needs its own
    assert passes[1:] == [([4, 5, 6], [(2, 1, [5, 6]), (3, 1, [5, 7]), (4, 1, [5])]), ([4, 6, 6], [(5, 1, [6, 6])])]


# ---------------------------------------------------------------- the random tiny Llama

@pytest.fixture(scope="module")
def tiny_backend():
    from crescent.backends import build_backend

    cfg = compose_cfg(["model@teacher=tiny_llama", "backend.dtype=float32"])
    return build_backend(cfg.backend, cfg.teacher, cfg.paths.cache_dir)


def _naive_loglik(backend, ctx_ids, cont_ids):
    import torch

    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(backend.model(input_ids=ids).logits.float(), dim=-1)[0]
    return sum(float(logp[len(ctx_ids) - 1 + j, t]) for j, t in enumerate(cont_ids))


def test_loglik_matches_one_forward_per_request(tiny_backend):
    tok = tiny_backend.tokenizer
    chat = [{"role": "user", "content": "Is 2 + 2 = 4?"}]
    requests = [("Question: 2 + 2?\nProposed answer: 4\nVerdict:", " Correct"),
                ("Question: 2 + 2?\nProposed answer: 4\nVerdict:", " Incorrect"),
                ("A much longer context about apples and boxes, padded in the batch.\nVerdict:", " Correct"),
                (chat, "Correct")]
    got = HFJudge(tiny_backend, batch_size=3).loglik(requests)
    chat_ids = tok(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False).input_ids
    ctx = [tok(r[0]).input_ids for r in requests[:3]] + [chat_ids]
    want = [_naive_loglik(tiny_backend, c, tok(x, add_special_tokens=False).input_ids) for c, (_, x) in zip(ctx, requests)]
    assert got == pytest.approx(want, abs=1e-4)
    assert all(v < 0 for v in got)
    # a context longer than max_length loses its oldest tokens
    short = HFJudge(tiny_backend, max_length=6).loglik(requests[:2])
    ids = tok(requests[0][0]).input_ids
    cont = tok(" Incorrect", add_special_tokens=False).input_ids
    assert short[1] == pytest.approx(_naive_loglik(tiny_backend, ids[-(6 - len(cont)):], cont), abs=1e-4)


@pytest.mark.parametrize("name", VERIFIERS)
def test_every_verifier_on_tiny_llama(tiny_backend, name):
    overrides = [f"verify={name}"]
    if name in ("cot_binary", "cot_score", "tournament"):
        overrides.append("verify.sampling.max_new_tokens=6")
    if name == "all_of":
        overrides += ["verify.verifiers.cot_score.sampling.max_new_tokens=6", "verify.verifiers.mc.filter=quantile"]
    vcfg = compose_cfg(overrides).verify
    judge = HFJudge(tiny_backend)
    items = _items()
    a = verify_samples(judge, items, vcfg, seed=0)
    b = verify_samples(judge, items, vcfg, seed=0)
    assert a.scores == b.scores and a.kept == b.kept and a.details == b.details  # deterministic for a seed
    assert [len(r) for r in a.scores] == [len(r) for r in a.kept] == [3, 1]
    assert a.counts["samples"] == 4 and a.counts["kept"] + a.counts["rejected"] == 4
    assert len(a.rejections) == a.counts["rejected"]
    if name == "none":
        return
    assert all(0.0 <= s <= 1.0 for row in a.scores for s in row)
    if name in ("cot_binary", "cot_score"):  # a random model rarely writes a verdict: invalid, recorded, rejected
        invalid = [d for row in a.details for d in row if not d["valid"]]
        assert a.counts["invalid"] == len(invalid)
        assert all(d["reason"].startswith("invalid:") and not d["kept"] and d["score"] == 0.0 for d in invalid)
        assert all(isinstance(d["raw"], str) for row in a.details for d in row)
    if name == "mc":
        assert all(0.0 < s < 1.0 for row in a.scores for s in row) and a.counts["invalid"] == 0
    if name == "tournament":
        assert a.scores[1] == [1.0] and sorted(a.scores[0]) == [0.0, 0.5, 1.0]  # 3 samples: 2 rounds, one bye


def test_lazy_backend_is_built_only_to_generate():
    built = []

    class Fake:
        model = tokenizer = None

        def generate(self, prompts, params, seed):
            return [["Verdict: correct"] for _ in prompts]

    def factory():
        built.append(1)
        return Fake()

    judge = HFJudge(factory, load=lambda: pytest.fail("no log-likelihood was asked for"))
    assert built == []
    assert verify_samples(judge, _items(), _cfg("cot_binary")).counts["kept"] == 4
    assert built == [1]
    judge = HFJudge(factory, load=lambda: (_ for _ in ()).throw(RuntimeError("loader called")))
    with pytest.raises(RuntimeError, match="loader called"):  # mc with an unbuilt backend loads its own model
        judge.loglik([("ctx", " Correct")])
    assert built == [1]
