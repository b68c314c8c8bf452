"""Benchmark decontamination (crescent/synth/decontam.py): planted GSM8K test questions among generated ones."""
import json

import pytest

from crescent import pipeline
from crescent.synth import decontam
from crescent.utils.io import read_json, read_jsonl

HEAD = 60  # GSM8K test items used as the test set here (ids = positions, as in the full split)
VERBATIM = 0  # "Janet's ducks ..."
PARAPHRASED = 11  # Toula's pastries, reworded, same numbers
CHANGED = 36  # Terry's yogurts, other numbers: another problem
PARAPHRASE = ("Toula visited a bakery and purchased several kinds of pastries: 3 dozen donuts at $68 a dozen, 2 dozen "
              "mini cupcakes at $80 a dozen and 6 dozen mini cheesecakes at $55 a dozen. What did she pay in total?")
NEW_NUMBERS = ("Terry eats 3 yogurts a day.  They are currently on sale at 6 yogurts for $7.00.  How much does he "
               "spend on yogurt over 45 days?")
FILLERS = ["A farmer has 12 cows and buys 5 more. How many cows does the farmer have now?",
           "A train travels 90 km in 2 hours. What is its average speed in km per hour?",
           "Sara reads 14 pages a day for a week. How many pages does she read?"]


@pytest.fixture(scope="module")
def gsm8k_head():
    from crescent.data.benchmarks import gsm8k

    return gsm8k()["test"][:HEAD]


def _planted(docs):
    return [{"id": "q-verbatim", "text": docs[VERBATIM]["question"]}, {"id": "q-paraphrase", "text": PARAPHRASE},
            {"id": "q-numbers", "text": NEW_NUMBERS}] + [{"id": f"q-{i}", "text": t} for i, t in enumerate(FILLERS)]


def test_ngrams_follow_lm_eval_janitor_normalisation():
    text = "The Quick, brown fox; jumps over the lazy dog's back and runs far away now"
    assert decontam.ngrams(text) == decontam.ngrams(text.upper().replace(",", " ,"))  # case and punctuation
    assert len(decontam.ngrams(text)) == len(decontam.normalize(text).split()) - 12
    assert decontam.ngrams("only twelve words here so no thirteen gram can be formed") == set()
    assert decontam.numbers("paid $1,200.50 for 3 and 04.0") == ["04", "1200.5", "3"]


def test_report_flags_verbatim_and_paraphrase_not_changed_numbers(gsm8k_head):
    from crescent.synth.embed import get_embedder

    tests = {"gsm8k": [(str(i), d["question"]) for i, d in enumerate(gsm8k_head)]}
    embed = get_embedder().encode
    pairs, counts = decontam.measure(_planted(gsm8k_head), tests, embed=embed, threshold=0.85)
    flagged = {(p["question_id"], p["test"]): p for p in pairs if p["flagged"]}
    assert set(flagged) == {("q-verbatim", "ngram"), ("q-verbatim", "embedding"), ("q-paraphrase", "embedding")}
    assert flagged["q-verbatim", "ngram"]["test_id"] == str(VERBATIM) and flagged["q-verbatim", "ngram"]["score"] == 1
    assert flagged["q-paraphrase", "embedding"]["test_id"] == str(PARAPHRASED)
    assert all(p["benchmark"] == "gsm8k" for p in flagged.values())
    near = next(p for p in pairs if p["question_id"] == "q-numbers")  # reported as a close pair, not flagged
    assert near["test_id"] == str(CHANGED) and near["score"] >= 0.85 and not near["numbers_match"]
    assert counts == {"checked": 6, "test_items": HEAD, "flagged_ngram": 1, "flagged_embedding": 2, "flagged": 2,
                      "flagged_pairs_by_benchmark": {"gsm8k": 3}}
    # the number guard is what separates the changed-numbers variant: similarity alone flags it
    loose, _ = decontam.measure(_planted(gsm8k_head), tests, embed=embed, threshold=0.85, match_numbers=False)
    assert "q-numbers" in decontam.flagged_ids(loose)
    # n-grams only (embedding off): the verbatim copy alone
    assert decontam.flagged_ids(decontam.measure(_planted(gsm8k_head), tests)[0]) == {"q-verbatim"}


def _run(make_cfg, tmp_path, policy, docs):
    data = tmp_path / "planted.jsonl"
    data.write_text("".join(json.dumps({"question": q["text"]}) + "\n" for q in _planted(docs)))
    head = tmp_path / "gsm8k_head.jsonl"
    head.write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = make_cfg("debug=default", "questions=dataset", "questions.dataset.loader=file",
                   f"questions.dataset.path={data}", "questions.formats=[cot_zeroshot]", "sampling.num_questions=6",
                   "voting.k=1", f"decontam={policy}", "+eval/benchmark@eval.benchmarks.gsm8k_head=gsm8k",
                   "eval.benchmarks.gsm8k_head.loader=file", f"+eval.benchmarks.gsm8k_head.path={head}",
                   "decontam.benchmarks=[gsm8k_head]", f"eval.data_roots=[{tmp_path}]")
    return pipeline.run(cfg)["generate"].record


def test_pipeline_reports_then_drops_planted_test_questions(make_cfg, tmp_path, gsm8k_head, monkeypatch):
    from crescent.utils.tracking import Tracker

    tables = {}
    monkeypatch.setattr(Tracker, "log_table", lambda self, name, rows, columns: tables.update({name: (rows, columns)}))
    synth = tmp_path / "run" / "synth"
    report = _run(make_cfg, tmp_path, "report", gsm8k_head)
    rows, columns = tables["synth/contamination"]  # the W&B table: the same pairs
    assert rows == list(read_jsonl(synth / "contamination.jsonl")) and {"question_id", "test_id", "score"} <= set(columns)
    questions = {q["text"]: q["id"] for q in read_jsonl(synth / "questions.jsonl")}
    assert len(questions) == 6
    pairs = list(read_jsonl(synth / "contamination.jsonl"))
    flagged = {(p["question"], p["test"], p["test_id"]) for p in pairs if p["flagged"]}
    verbatim = gsm8k_head[VERBATIM]["question"]
    assert flagged == {(verbatim, "ngram", str(VERBATIM)), (verbatim, "embedding", str(VERBATIM)),
                       (PARAPHRASE, "embedding", str(PARAPHRASED))}
    c = report["counts"]
    assert (c["decontam_checked"], c["decontam_flagged_ngram"], c["decontam_flagged_embedding"],
            c["decontam_dropped"]) == (6, 1, 2, 0)
    assert read_json(synth / "manifest.json")["decontam"]["policy"] == "report"
    rows_before = list(read_jsonl(synth / "sft.jsonl"))

    monkeypatch.setattr(decontam, "measure", lambda *a, **k: pytest.fail("the report's measurement is cached"))
    dropped = _run(make_cfg, tmp_path, "drop", gsm8k_head)  # same generation and measurement: cache hits, then the drop
    assert dropped["cache_hit"]
    assert dropped["counts"]["decontam_dropped"] == 2 == dropped["decontam"]["dropped"]
    kept = {q["text"] for q in read_jsonl(synth / "questions.jsonl")}
    assert kept == set(questions) - {verbatim, PARAPHRASE} and NEW_NUMBERS in kept
    rows = list(read_jsonl(synth / "sft.jsonl"))
    assert {r["question"] for r in rows} <= kept
    assert len(rows_before) - len(rows) == dropped["decontam"]["dropped_rows"]
    assert {a["id"] for a in read_jsonl(synth / "answers.jsonl")} == {questions[t] for t in kept}
    # the cached generation keeps every question (the drop applies to this run's copy)
    assert len(list(read_jsonl(dropped["cache_dir"] + "/questions.jsonl"))) == 6


def test_no_test_questions_is_a_config_error_naming_the_keys(make_cfg, tmp_path):
    from crescent.config import ConfigError
    from crescent.synth.generate import _decontaminate

    cfg = make_cfg("decontam=report", "decontam.text_fields=[no_such_field]")
    with pytest.raises(ConfigError, match=r"decontam.text_fields=\['no_such_field'\].*decontam=none"):
        _decontaminate(cfg, tmp_path, tmp_path, pipeline.decontam_test_sets(cfg))
