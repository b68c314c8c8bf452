"""Generation-verification gap: every formula on hand-computed toy cases (edge cases included), the prompts,
the config checks, the stage end to end with a scripted backend (exact numbers) and on tiny_llama."""
import json
from math import comb

import pytest

import crescent.backends
from helpers import compose_cfg
from crescent.config import ConfigError
from crescent.gap import prompts as gp
from crescent.gap.checks import gap_errors, stage_errors
from crescent.gap.metrics import gap_metrics, maj_correct, pass_at_k, question_terms, sample_metrics
from crescent.gap.stage import run

T, F = True, False

# ---------------------------------------------------------------- pass@k, maj@k


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 1, 0.25),
    (4, 1, 2, 1 - 3 / 6),        # 1 - C(3,2)/C(4,2)
    (5, 2, 3, 1 - 1 / 10),       # 1 - C(3,3)/C(5,3)
    (4, 3, 2, 1.0),              # n - c < k: every draw of 2 holds a correct one
    (4, 0, 2, 0.0),              # none correct
    (4, 4, 4, 1.0),              # all correct, k = n
    (8, 2, 8, 1.0),
    (3, 1, 4, None),             # k > n: not defined
    (0, 0, 1, None),
])
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == (pytest.approx(expected) if expected is not None else None)


def test_pass_at_1_is_accuracy_and_matches_the_definition():
    for n in range(1, 7):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_maj_at_k():
    answers = ["3", "5", "5", None]
    assert maj_correct(answers, "5", 1) is False
    assert maj_correct(answers, "5", 2) is False   # tie 3 vs 5: the answer seen first
    assert maj_correct(answers, "5", 3) is True
    assert maj_correct(answers, "5", 4) is True    # None never wins
    assert maj_correct(answers, "5", 5) is None    # k > n
    assert maj_correct([None, None], "5", 2) is False
    assert maj_correct(["5.0", "5"], "5", 2) is True  # answers compare as numbers


# ---------------------------------------------------------------- J, J_f, gap, relative gap

# q1: J = 1/4, kept 2 (one correct): J_f = 1/2, relative (1/2 - 1/4) / (3/4) = 1/3
# q2: all correct, J = 1 (perfect), kept 1: J_f = 1
# q3: J = 1/2, nothing kept
TOY_CORRECT = [[T, F, F, F], [T, T, T, T], [F, T, F, T]]
TOY_KEPT = [[T, F, T, F], [T, F, F, F], [F, F, F, F]]


def test_question_terms():
    assert question_terms([T, F, F, F], [T, F, T, F]) == {"n": 4, "correct": 1, "kept": 2, "J": 0.25, "J_f": 0.5,
                                                          "relative": pytest.approx(1 / 3)}
    assert question_terms([T, T], [T, F])["relative"] is None            # J = 1, exclude
    assert question_terms([T, T], [T, F], "zero")["relative"] == 0.0     # J = 1, counted as 0
    assert question_terms([F, F], [T, T]) == {"n": 2, "correct": 0, "kept": 2, "J": 0.0, "J_f": 0.0, "relative": 0.0}
    assert question_terms([T, F], [F, F])["J_f"] is None                 # nothing kept
    assert question_terms([F, T], [F, T])["relative"] == 1.0             # the verifier found the correct one


def test_gap_default_policies_unchanged_and_exclude():
    m = gap_metrics(TOY_CORRECT, TOY_KEPT)  # empty: unchanged (J_f(q3) = J(q3)); perfect: exclude
    assert m["questions"] == 3 and m["questions_included"] == 3
    assert m["acc_all"] == pytest.approx((0.25 + 1 + 0.5) / 3)
    assert m["acc_filtered"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["gap"] == pytest.approx(0.25 / 3)
    assert m["acc_all_included"] == pytest.approx(m["acc_all"])
    assert m["relative_gap"] == pytest.approx((1 / 3 + 0) / 2) and m["relative_gap_questions"] == 2  # q1, q3
    assert m["kept_fraction"] == pytest.approx(3 / 12)
    assert m["acc_filtered_pooled"] == pytest.approx(2 / 3)
    assert (m["questions_nothing_kept"], m["questions_all_correct"], m["questions_none_correct"]) == (1, 1, 0)


def test_gap_exclude_empty_and_zero_perfect():
    m = gap_metrics(TOY_CORRECT, TOY_KEPT, perfect_policy="zero", empty_policy="exclude")
    assert m["questions_included"] == 2  # q3 dropped
    assert m["acc_all"] == pytest.approx(1.75 / 3)           # J stays over all questions
    assert m["acc_all_included"] == pytest.approx(0.625)
    assert m["acc_filtered"] == pytest.approx(0.75)
    assert m["gap"] == pytest.approx(0.125)                  # J_f - J over the same questions
    assert m["relative_gap"] == pytest.approx((1 / 3 + 0) / 2) and m["relative_gap_questions"] == 2  # q1, q2 as 0
    m = gap_metrics(TOY_CORRECT, TOY_KEPT, perfect_policy="exclude", empty_policy="exclude")
    assert m["relative_gap"] == pytest.approx(1 / 3) and m["relative_gap_questions"] == 1
    m = gap_metrics(TOY_CORRECT, TOY_KEPT, perfect_policy="zero", empty_policy="unchanged")
    assert m["relative_gap"] == pytest.approx(1 / 9) and m["relative_gap_questions"] == 3


def test_gap_all_correct():
    m = gap_metrics([[T, T], [T, T]], [[T, F], [F, F]])
    assert m["acc_all"] == m["acc_filtered"] == 1.0 and m["gap"] == 0.0
    assert m["relative_gap"] is None and m["relative_gap_questions"] == 0   # nothing to improve: excluded
    assert gap_metrics([[T, T], [T, T]], [[T, F], [F, F]], perfect_policy="zero")["relative_gap"] == 0.0


def test_gap_none_correct():
    m = gap_metrics([[F, F], [F, F, F]], [[T, F], [F, F, T]])
    assert m["acc_all"] == m["acc_filtered"] == m["gap"] == m["relative_gap"] == 0.0
    assert m["questions_none_correct"] == 2 and m["acc_filtered_pooled"] == 0.0


def test_gap_nothing_kept_anywhere():
    m = gap_metrics([[T, F], [F, F]], [[F, F], [F, F]])  # unchanged: no gain, no loss
    assert m["acc_filtered"] == m["acc_all"] == 0.25 and m["gap"] == 0.0 and m["relative_gap"] == 0.0
    assert m["kept_fraction"] == 0.0 and m["acc_filtered_pooled"] is None and m["questions_nothing_kept"] == 2
    m = gap_metrics([[T, F], [F, F]], [[F, F], [F, F]], empty_policy="exclude")
    assert m["acc_filtered"] is None and m["gap"] is None and m["relative_gap"] is None
    assert m["questions_included"] == 0 and m["acc_all"] == 0.25


def test_gap_keeping_everything_is_zero_gap():
    m = gap_metrics(TOY_CORRECT, [[T] * 4] * 3)
    assert m["gap"] == 0.0 and m["relative_gap"] == 0.0 and m["kept_fraction"] == 1.0


def test_gap_rejects_unknown_policies():
    with pytest.raises(ValueError, match="perfect_question_policy"):
        gap_metrics([[T]], [[T]], perfect_policy="drop")
    with pytest.raises(ValueError, match="empty_keep_policy"):
        gap_metrics([[T]], [[T]], empty_policy="zero")


def test_sample_metrics():
    correct = [[T, F, F, F], [T, T, T, T]]
    answers = [["18", "5", "5", "5"], ["3", "3", "3", "3"]]
    m = sample_metrics(correct, answers, ["18", "3"], [1, 2, 4, 8])
    assert m["acc_all"] == 0.625 and m["pass@1"] == 0.625
    assert m["pass@2"] == pytest.approx((0.5 + 1) / 2) and m["pass@4"] == 1.0 and m["pass@8"] is None
    assert m["maj@1"] == 1.0 and m["maj@2"] == 1.0 and m["maj@4"] == 0.5 and m["maj@8"] is None
    assert m["majority_gain"] == pytest.approx(0.5 - 0.625)
    m = sample_metrics([[T, F, T]], [["1", "2", "1"]], ["1"], [1])
    assert "maj@3" in m and m["maj@3"] == 1.0 and m["majority_gain"] == pytest.approx(1 / 3)  # maj@n always


# ---------------------------------------------------------------- prompts

BENCH = {"question_template": "Question: {{question}}\nAnswer:", "answer_field": "answer"}


def test_fewshot_prompt_layout_and_gold():
    shots = [{"question": "a?", "answer": "sol a\n#### 1"}, {"question": "b?", "answer": "sol b\n#### 2"}]
    doc = {"question": "c?", "answer": "x\n#### 1,250"}
    assert gp.build_prompt(doc, shots, BENCH) == (
        "Question: a?\nAnswer: sol a\n#### 1\n\nQuestion: b?\nAnswer: sol b\n#### 2\n\nQuestion: c?\nAnswer:")
    assert gp.build_prompt(doc, shots[:1], BENCH, chat=True) == [
        {"role": "user", "content": "Question: a?\nAnswer:"}, {"role": "assistant", "content": "sol a\n#### 1"},
        {"role": "user", "content": "Question: c?\nAnswer:"}]
    assert gp.build_prompt(doc, [], BENCH) == "Question: c?\nAnswer:"
    assert gp.gold_answer(doc, BENCH) == "1250"
    assert gp.gold_answer({"final": "7"}, {"answer_field": "final"}) == "7"
    assert gp.gold_answer({"answer": "#### n/a"}, BENCH) is None
    assert gp.question_text(doc, BENCH, "question") == "c?"
    assert gp.question_text(doc, BENCH, None) == "Question: c?\nAnswer:"


def test_limit_and_exemplars():
    docs = [{"i": i} for i in range(10)]
    assert gp.limit_docs(docs, None) == docs and gp.limit_docs(docs, 3) == docs[:3]
    assert gp.limit_docs(docs, 0.25) == docs[:3]  # ceil
    a = gp.exemplars(docs, 4, seed=0, index=1)
    assert a == gp.exemplars(docs, 4, seed=0, index=1) and len(a) == 4
    assert a != gp.exemplars(docs, 4, seed=0, index=2)
    for i in range(20):
        assert docs[3] not in gp.exemplars(docs, 9, seed=i, index=i, exclude=docs[3])
    assert len(gp.exemplars(docs[:2], 4, 0, 0)) == 2


def test_gsm8k_prompt_from_the_shipped_config():
    from crescent.eval.benchmarks import load_docs

    cfg = compose_cfg([])
    bench = dict(cfg.gap.benchmark)
    docs = load_docs(bench)
    prompt = gp.build_prompt(docs["test"][0], gp.exemplars(docs["fewshot"], 4, 0, 0), bench)
    assert prompt.count("Question: ") == 5 and prompt.count("####") == 4
    assert prompt.endswith(f"Question: {docs['test'][0]['question']}\nAnswer:")
    assert gp.gold_answer(docs["test"][0], bench) == "18"


# ---------------------------------------------------------------- config checks

@pytest.mark.parametrize("verify", ["none", "mc", "cot_binary", "cot_score", "tournament", "all_of"])
def test_default_gap_config_is_valid(verify):
    assert stage_errors(compose_cfg([f"verify={verify}"])) == []


def test_gap_config_errors():
    cfg = compose_cfg(["verify=mc", "gap.n_samples=0", "gap.pass_k=[0]", "gap.limit=1.5",
                       "gap.empty_keep_policy=zero", "verify.quantile=-1"])
    text = "\n".join(stage_errors(cfg))
    assert not any(e.startswith("  verify.") for e in gap_errors(cfg))  # the verify group is checked on its own
    assert "gap.n_samples=0 is invalid: expected an integer >= 1" in text
    assert "gap.pass_k=[0] is invalid: expected a non-empty list of integers >= 1" in text
    assert "gap.limit=1.5 is invalid" in text
    assert "gap.empty_keep_policy='zero' is invalid: expected one of ['unchanged', 'exclude']" in text
    assert "verify.quantile=-1 is invalid" in text
    assert gap_errors(compose_cfg(["~gap"])) == ["  gap: missing (add `+gap=default`, or `- gap: default` to the defaults list)"]


def test_run_fails_before_loading_a_model(make_cfg, monkeypatch):
    monkeypatch.setattr(crescent.backends, "build_backend", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ConfigError, match="gap.temperature=-1"):
        run(make_cfg("verify=mc", "gap.temperature=-1"))


# ---------------------------------------------------------------- the stage with a scripted model: exact numbers

class ScriptedBackend:
    """Samples: q0 (Janet's ducks, gold 18) answers 18, 5, 5, 5; q1 (the robe, gold 3) answers 3 four times.
    Verifier: says correct for q0's samples 0 and 1 and for q1's sample 0."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, params, seed):
        self.calls += 1
        return [[self._one(p, j) for j in range(params.n)] for p in prompts]

    @staticmethod
    def _one(prompt, j):
        last = prompt.rsplit("Question:", 1)[1]
        if "Proposed answer:" not in last:  # sampling
            return f" s{j} #### " + ("3" if "robe" in last else ("18" if j == 0 else "5"))
        sample = int(last.split("Proposed answer: s", 1)[1][0])
        ok = sample == 0 or (sample == 1 and "robe" not in last)
        return f" looks {'fine' if ok else 'off'}.\nVerdict: {'correct' if ok else 'incorrect'}"


def test_stage_end_to_end_with_a_scripted_model(make_cfg, monkeypatch, tmp_path):
    backend = ScriptedBackend()
    monkeypatch.setattr(crescent.backends, "build_backend", lambda *a, **k: backend)
    cfg = make_cfg("verify=cot_binary", "gap.limit=2", "gap.n_samples=4", "gap.cache=false",
                   "gap.pass_k=[1,2,4,8]", "logger=none")
    out = run(cfg)
    m = out["metrics"]
    assert m["acc_all"] == 0.625 and m["acc_filtered"] == 0.75 and m["gap"] == 0.125
    assert m["relative_gap"] == pytest.approx(1 / 3) and m["relative_gap_questions"] == 1  # q1 is perfect: excluded
    assert m["kept_fraction"] == 3 / 8 and m["questions_nothing_kept"] == 0 and m["invalid_judgements"] == 0
    assert m["pass@1"] == 0.625 and m["pass@2"] == 0.75 and m["pass@4"] == 1.0 and "pass@8" not in m
    assert m["maj@1"] == 1.0 and m["maj@4"] == 0.5 and m["majority_gain"] == pytest.approx(-0.125)
    run_dir = tmp_path / "run" / "gap"
    rows = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in rows] == ["18", "3"]
    assert rows[0]["extracted"] == ["18", "5", "5", "5"] and rows[0]["correct"] == [T, F, F, F]
    assert rows[0]["kept"] == [T, T, F, F] and rows[0]["scores"] == [1.0, 1.0, 0.0, 0.0]
    assert rows[0]["J"] == 0.25 and rows[0]["J_f"] == 0.5 and rows[1]["relative_gap"] is None
    assert "Verdict: correct" in rows[0]["verifier"][0]["raw"]
    rejections = [json.loads(x) for x in (run_dir / "rejections.jsonl").read_text().splitlines()]
    assert len(rejections) == 5 and all(r["reasons"] == ["below_threshold"] for r in rejections)
    result = json.loads((run_dir / "results.json").read_text())
    assert result["questions"] == 2 and result["verifier"] == {"name": "cot_binary", "filter": "threshold 0.5"}
    assert result["verify_counts"]["kept"] == 3 and any("pass@k for k=[8]" in n for n in result["notes"])
    summary = (run_dir / "summary.md").read_text()
    assert "| gap = J_f - J | 0.1250 |" in summary and "| maj@4 | 0.5000 |" in summary
    # a rerun reuses the sampled chunks: only the verifier calls the model again
    calls = backend.calls
    run(cfg)
    assert backend.calls == calls + 1


def test_verify_none_reports_sample_metrics_only(make_cfg, monkeypatch):
    monkeypatch.setattr(crescent.backends, "build_backend", lambda *a, **k: ScriptedBackend())
    out = run(make_cfg("verify=none", "eval.limit=2", "gap.n_samples=4", "gap.cache=false",
                       "logger=none"))
    assert set(out["metrics"]) == {"acc_all", "pass@1", "pass@2", "pass@4", "maj@1", "maj@2", "maj@4", "majority_gain"}
    assert out["metrics"]["acc_all"] == 0.625  # eval.limit=2 was used
    assert "the generation-verification gap needs a verifier" in out["summary"]


# ---------------------------------------------------------------- the stage on tiny_llama


def test_gap_stage_on_tiny_llama(make_cfg, tmp_path):
    cfg = make_cfg("model@teacher=tiny_llama", "verify=mc", "gap.limit=3", "gap.n_samples=2",
                   "gap.max_new_tokens=12", "gap.top_p=1.0", "gap.cache=false", "logger=none")  # top_p<1 sorts a flat vocab
    out = run(cfg)
    m = out["metrics"]
    for key in ("acc_all", "acc_filtered", "gap", "kept_fraction", "pass@1", "pass@2", "maj@2", "majority_gain"):
        assert key in m, key
    assert 0.0 <= m["kept_fraction"] <= 1.0
    rows = [json.loads(x) for x in (tmp_path / "run" / "gap" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["responses"]) == len(r["scores"]) == len(r["kept"]) == 2 for r in rows)
    assert all(0.0 < s < 1.0 for r in rows for s in r["scores"])


def test_compare_tabulates_a_sweep(tmp_path, monkeypatch):
    import importlib.util

    from helpers import ROOT

    spec = importlib.util.spec_from_file_location("compare", ROOT / "experiments/gap_verifiers/compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    monkeypatch.setattr(crescent.backends, "build_backend", lambda *a, **k: ScriptedBackend())
    sweep = tmp_path / "sweep"
    for job, verify in (("0_verify=cot_binary", "cot_binary"), ("1_verify=none", "none")):
        cfg = compose_cfg([f"verify={verify}", "gap.limit=2", "gap.n_samples=4", "gap.cache=false",
                           "logger=none", f"paths.output_dir='{sweep / job}'"])
        run(cfg)
    (sweep / "2_verify=mc").mkdir()
    (sweep / "2_verify=mc" / "status.json").write_text(json.dumps({"status": "failed", "error": "OOM"}))
    assert compare.main([str(sweep)]) == 1  # a failed job makes the exit status 1
    text = (sweep / "gap_compare.md").read_text()
    assert "| 0_verify=cot_binary | smollm2_135m_instruct | cot_binary | threshold 0.5 | 2 | 4 | 0.6250 | 0.7500 | " \
           "0.1250 | 0.3333 | 0.3750 | 0 | 0.6250 | 0.5000 |" in text
    assert "| 1_verify=none | smollm2_135m_instruct | none |  | 2 | 4 | 0.6250 | – |" in text
    assert "- 2_verify=mc: failed OOM" in text
    assert (sweep / "gap_compare.csv").read_text().startswith("job,model,verifier")
