"""The LMSI and Mind-the-Gap benchmarks: shipped counts, first prompts, extraction and scoring on
hand-written responses, numeric gold, the exact-vs-equivalent warning, Sudoku, MNLI/DROP user files."""
import json
import logging

import pytest
from omegaconf import OmegaConf

from crescent.answers import canonical_number, equivalent
from crescent.eval import benchmarks as B
from crescent.eval import scoring, sudoku
from crescent.eval.tasks import build_task

COUNTS = {  # (loader, options): (test docs, few-shot pool)
    ("math", "{}"): (5000, 0), ("math", '{"subset": "math500"}'): (500, 0), ("svamp", "{}"): (1000, 7473),
    ("aqua", "{}"): (254, 254), ("strategyqa", "{}"): (2290, 0), ("strategyqa", '{"source": "dev"}'): (229, 0),
    ("anli", '{"round": 1}'): (1000, 1000), ("anli", '{"round": 2}'): (1000, 1000),
    ("anli", '{"round": 3}'): (1200, 1200), ("rte", "{}"): (277, 0), ("openbookqa", "{}"): (500, 0),
    ("nq_open", "{}"): (3610, 0), ("sudoku", "{}"): (288, 0),
}


@pytest.mark.parametrize("loader,options", sorted(COUNTS), ids=[f"{a}{b}" for a, b in sorted(COUNTS)])
def test_loader_counts_on_shipped_data(loader, options):
    docs = B.SHIPPED[loader](**json.loads(options))
    assert (len(docs["test"]), len(docs["fewshot"])) == COUNTS[(loader, options)]


def test_gold_fields_are_well_formed():
    assert all(d["answer"] for d in B.math()["test"])  # every MATH solution has a \boxed{} answer
    assert B.math("math500")["test"][0]["answer"] == "\\left(3,\\frac{\\pi}{2}\\right)"
    assert B.svamp()["test"][0]["answer"] == "51"  # the file's 51.0
    assert {d["answer"] for d in B.aqua()["test"]} == set("abcde")
    assert {d["answer"] for d in B.strategyqa()["test"]} == {"yes", "no"}
    for r in (1, 2, 3):
        assert {d["label"] for d in B.anli(r)["test"]} == {0, 1, 2}
    assert sum(d["label"] == 0 for d in B.rte()["test"]) == 146  # entailment 146 / not 131 (data README)
    assert all(isinstance(d["answer"], list) and d["answer"] for d in B.nq_open()["test"])


def test_a_shipped_file_altered_or_missing_is_named(tmp_path, monkeypatch):
    for rel in ("svamp/SVAMP.json", "SHA256SUMS"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((B.DATA_DIR / rel).read_bytes())
    monkeypatch.setattr(B, "DATA_DIR", tmp_path)
    B.data_file.cache_clear(), B._checksums.cache_clear()
    try:
        assert B.data_file("svamp/SVAMP.json") == tmp_path / "svamp/SVAMP.json"
        B.data_file.cache_clear()
        (tmp_path / "svamp/SVAMP.json").write_text("[]")
        with pytest.raises(ValueError, match=r"svamp/SVAMP.json was altered .*git checkout"):
            B.data_file("svamp/SVAMP.json")
        B.data_file.cache_clear()
        (tmp_path / "svamp/SVAMP.json").unlink()
        with pytest.raises(FileNotFoundError, match=r"svamp/SVAMP.json is missing"):
            B.data_file("svamp/SVAMP.json")
    finally:
        B.data_file.cache_clear(), B._checksums.cache_clear()


# ---- prompts and scoring through lm-eval's own Task ------------------------------------------------------

def _task(make_cfg, name, shots=0, limit=1, **spec_overrides):
    from lm_eval.tasks import TaskManager, get_task_dict

    cfg = make_cfg(f"+eval/benchmark@eval.benchmarks.{name}={name}")
    spec = {**OmegaConf.to_container(cfg.eval.benchmarks[name], resolve=True), **spec_overrides}
    task = get_task_dict([build_task(name, spec, max_gen_toks=32)], TaskManager(include_defaults=False))[name]
    task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return task


def _score(task, response: str, doc_id: int = 0) -> dict:
    """{filter: {metric: value}} of one hand-written response to document doc_id."""
    insts = [i for i in task.instances if i.doc_id == doc_id]
    for i in task.instances:
        i.resps = [response] if i.doc_id == doc_id else ["-"]
    task.apply_filters()
    doc = insts[0].doc
    return {f: task.process_results(doc, [insts[0].filtered_resps[f]]) for f in insts[0].filtered_resps}


FIRST_PROMPTS = {
    "math": "Problem:\nHow many vertical asymptotes does the graph of $y=\\frac{2}{x^2+x-6}$ have?\n\nSolution:",
    "svamp": "Question: Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack How "
             "much do you have to pay to buy each pack?\nAnswer:",
    "aqua": "Q: A car is being driven, in a straight line and at a uniform speed, towards the base of a vertical "
            "tower. The top of the tower is observed from the car and, in the process, it takes 10 minutes for the "
            "angle of elevation to change from 45° to 60°. After how much more time will this car reach the base "
            "of the tower? Answer Choices: (a) 5(√3 + 1) (b) 6(√3 + √2) (c) 7(√3 – 1) (d) 8(√3 – 2) "
            "(e) None of these\nA:",
    "strategyqa": "Q: Is it common to see frost during some college commencements?\nA:",
    "anli_r1": "Ernest Jones is a British jeweller and watchmaker. Established in 1949, its first store was opened "
               "in Oxford Street, London. Ernest Jones specialises in diamonds and watches, stocking brands such as "
               "Gucci and Emporio Armani. Ernest Jones is part of the Signet Jewelers group.\nQuestion: The first "
               "Ernest Jones store was opened on the continent of Europe. True, False, or Neither?\nAnswer:",
    "anli_r1_cot": "Premise:\n\"Ernest Jones is a British jeweller and watchmaker. Established in 1949, its first "
                   "store was opened in Oxford Street, London. Ernest Jones specialises in diamonds and watches, "
                   "stocking brands such as Gucci and Emporio Armani. Ernest Jones is part of the Signet Jewelers "
                   "group.\"\nBased on this premise, can we conclude the hypothesis \"The first Ernest Jones store "
                   "was opened on the continent of Europe.\" is true?\nOPTIONS:\n- yes\n- it is not possible to "
                   "tell\n- no\nA:",
    "rte": "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to "
           "the Christopher Reeve Foundation.\nQuestion: Christopher Reeve had an accident. True or False?\nAnswer:",
    "rte_cot": "Premise:\n\"Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, "
               "according to the Christopher Reeve Foundation.\"\nBased on this premise, can we conclude the "
               "hypothesis \"Christopher Reeve had an accident.\" is true?\nOPTIONS:\n- yes\n- no\nA:",
    "openbookqa": "A person wants to start saving money so that they can afford a nice vacation at the end of the "
                  "year. After looking over their budget and expenses, they decide the best way to save money is to",
    "nq_open": "Answer these questions:\n\nQ: when was the last time anyone was on the moon?\nA:",
    "sudoku4": "Solve this 4x4 Sudoku. Replace each 0 with a digit from 1 to 4 so that every row, every column and "
               "every 2x2 box contains 1, 2, 3 and 4 exactly once.\nPuzzle:\n1 0 0 0\n0 0 0 2\n0 0 0 3\n4 0 0 0\n"
               "Solution:",
}


@pytest.mark.parametrize("name", sorted(FIRST_PROMPTS))
def test_first_prompt(make_cfg, name):
    task = _task(make_cfg, name)
    assert task.instances[0].arguments[0] == FIRST_PROMPTS[name]


def test_math_prompt_uses_the_four_minerva_exemplars(make_cfg):
    prompt = _task(make_cfg, "math500", shots=4).instances[0].arguments[0]
    assert prompt.startswith("Problem:\nFind the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.")
    assert prompt.count("Problem:") == 5 and prompt.count("I hope it is correct.") == 4
    assert prompt.endswith("Problem:\nConvert the point $(0,3)$ in rectangular coordinates to polar coordinates.  "
                           "Enter your answer in the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$"
                           "\n\nSolution:")


# (benchmark, response, expected {filter: {metric: value}} subset) -- right, wrong, equivalent-but-not-equal, malformed
CASES = [
    ("math", "The denominator vanishes twice.\nFinal Answer: The final answer is $2$. I hope it is correct.",
     {"none": {"exact_match": 1, "math_equal": 1}}),
    ("math", "Final Answer: The final answer is $3$. I hope it is correct.", {"none": {"exact_match": 0, "math_equal": 0}}),
    ("math", "So there are $\\boxed{\\frac{4}{2}}$.\nFinal Answer: The final answer is $\\frac{4}{2}$. I hope it is "
             "correct.", {"none": {"exact_match": 0, "math_equal": 1}}),
    ("math", "I cannot say.", {"none": {"exact_match": 0, "math_equal": 0}}),
    ("svamp", "76 - 25 = 51\n#### 51", {"strict-match": {"exact_match": 1, "math_equal": 1},
                                        "flexible-extract": {"exact_match": 1, "math_equal": 1}}),
    ("svamp", "#### 52", {"strict-match": {"exact_match": 0, "math_equal": 0}}),
    ("svamp", "#### 51.00", {"strict-match": {"exact_match": 0, "math_equal": 1}}),
    ("svamp", "no idea", {"strict-match": {"exact_match": 0, "math_equal": 0},
                          "flexible-extract": {"exact_match": 0, "math_equal": 0}}),
    ("aqua", "h = x(√3+1)... The answer is (a).", {"custom-regex": {"exact_match": 1}}),
    ("aqua", "The answer is (c).", {"custom-regex": {"exact_match": 0}}),
    ("aqua", "So the answer is A", {"custom-regex": {"exact_match": 1}}),
    ("aqua", "Option A looks right", {"custom-regex": {"exact_match": 0}}),
    ("strategyqa", "Frost is common in December. So the answer is yes.", {"custom-regex": {"exact_match": 1}}),
    ("strategyqa", "So the answer is no.", {"custom-regex": {"exact_match": 0}}),
    ("strategyqa", "The answer is Yes", {"custom-regex": {"exact_match": 1}}),
    ("strategyqa", "yes", {"custom-regex": {"exact_match": 0}}),
    ("anli_r1_cot", "Oxford Street is in London, in Europe. So the answer is yes.", {"custom-regex": {"exact_match": 1}}),
    ("anli_r1_cot", "So the answer is it is not possible to tell.", {"custom-regex": {"exact_match": 0}}),
    ("anli_r1_cot", "The answer is Yes.", {"custom-regex": {"exact_match": 1}}),
    ("anli_r1_cot", "true", {"custom-regex": {"exact_match": 0}}),
    ("rte_cot", "Nothing says he had an accident. So the answer is no.", {"custom-regex": {"exact_match": 1}}),
    ("rte_cot", "So the answer is yes.", {"custom-regex": {"exact_match": 0}}),
    ("nq_open", " December 1972", {"remove_whitespace": {"exact_match": 1}}),
    ("nq_open", " the 14 December 1972 UTC", {"remove_whitespace": {"exact_match": 1}}),
    ("nq_open", " 1969", {"remove_whitespace": {"exact_match": 0}}),
    ("nq_open", " Dec. 1972", {"remove_whitespace": {"exact_match": 0}}),
    ("sudoku4", "\n1 2 3 4\n3 4 1 2\n2 1 4 3\n4 3 2 1", {"none": {"solved": 1}}),
    ("sudoku4", "\n1 2 3 4\n3 4 1 2\n2 1 4 3\n4 3 1 2", {"none": {"solved": 0}}),  # a column repeats
    ("sudoku4", "Row by row: 1234 3412 2143 4321.", {"none": {"solved": 1}}),  # same digits, other layout
    ("sudoku4", "\n1 2 3", {"none": {"solved": 0}}),
]


@pytest.mark.parametrize("name,response,expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_extraction_and_scoring(make_cfg, name, response, expected):
    got = _score(_task(make_cfg, name), response)
    for filt, metrics in expected.items():
        assert {m: got[filt][m] for m in metrics} == metrics, (filt, got)


def test_a_valid_grid_that_breaks_a_clue_is_not_solved():
    other = next(g for g in sudoku.all_grids() if g[0] != 1)  # puzzle 0's first clue is 1
    assert not sudoku.check(B.sudoku()["test"][0]["puzzle"], sudoku.render(other))


def test_sudoku_puzzles_each_have_exactly_one_solution():
    docs = B.sudoku()["test"]
    assert len(sudoku.all_grids()) == 288 and len({d["solution"] for d in docs}) == 288
    for d in docs:
        puzzle = sudoku.parse_grid(d["puzzle"])
        assert sudoku.count_solutions(puzzle, stop_at=3) == 1
        assert sudoku.check(d["puzzle"], d["solution"])
    assert sudoku.count_solutions((0,) * 16, stop_at=1000) == 288
    assert [d["puzzle"] for d in sudoku.puzzles(0)] == [d["puzzle"] for d in sudoku.puzzles.__wrapped__(0)]  # seeded
    assert [d["puzzle"] for d in sudoku.puzzles(1)] != [d["puzzle"] for d in docs]


# ---- numeric gold, equivalence, the warning ------------------------------------------------------------

def test_numbers_and_latex_compare_by_value():
    assert canonical_number(51.0) == "51" and canonical_number("1,250") == "1250" and canonical_number("x") == "x"
    for a, g in [("51", 51.0), ("$51", "51"), ("51.00", "51"), ("1/2", "0.5"), ("\\frac{1}{2}", "0.5"),
                 ("\\dfrac{3}{4}", "3/4"), ("Yes", "yes"), ("(b)", "B"), ("2", "#### 2"), ("1972", ["x", "1972"])]:
        assert equivalent(a, g), (a, g)
    for a, g in [("52", "51"), ("[invalid]", "3"), (None, "3"), ("no", "yes"), ("0.33", "1/3"), ("on", "no"),
                 ("ab", "ba"), ("x+1", "x+2")]:
        assert not equivalent(a, g), (a, g)


def test_user_file_with_numeric_gold_scores_right_answers_right(make_cfg, tmp_path):
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"Question": "What is 50 + 1?", "Answer": 51.0}, {"Question": "What is 2.5 * 2?", "Answer": 5},
        {"Question": "Which fraction is a half?", "Answer": [0.5, "1/2"]}]) + "\n")
    spec = {"loader": "file", "path": str(tmp_path / "q.jsonl"), "kind": "generate", "answer_field": "Answer",
            "question_template": "Question: {{Question}}\nAnswer:", "filters": ["flexible-extract", "answer-is"],
            "metric": ["exact_match", "math_equal"], "until": ["Question:"]}
    task = _task(make_cfg, "svamp", limit=3, **spec)
    assert _score(task, "50 + 1 = 51. The answer is 51.", 0) == {
        "flexible-extract": {"exact_match": 1.0, "math_equal": 1.0}, "answer-is": {"exact_match": 1.0, "math_equal": 1.0}}
    assert _score(task, "The answer is 5.", 1)["answer-is"] == {"exact_match": 1.0, "math_equal": 1.0}
    assert _score(task, "The answer is 6.", 1)["answer-is"] == {"exact_match": 0.0, "math_equal": 0.0}
    assert _score(task, "The answer is 5.0.", 1)["answer-is"] == {"exact_match": 0.0, "math_equal": 1.0}
    assert _score(task, "The answer is 0.5.", 2)["answer-is"] == {"exact_match": 1.0, "math_equal": 1.0}  # any gold


def test_one_warning_when_exact_match_misses_equivalent_answers(caplog):
    def sample(doc_id, filt, answer, target, exact):
        return {"doc_id": doc_id, "filter": filt, "filtered_resps": [answer], "target": target, "exact_match": exact}

    raw = {"samples": {
        "mine": [sample(0, "strict-match", "51.00", "51", 0.0), sample(1, "strict-match", "7", "8", 0.0),
                 sample(0, "flexible-extract", "51", "51", 1.0)],
        "fine": [sample(0, "strict-match", "3", "4", 0.0)],
    }}
    with caplog.at_level(logging.WARNING, logger="crescent.eval.scoring"):
        scoring.warn_exact_misses(raw)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "'mine'" in warnings[0] and "strict-match" in warnings[0]
    assert "'51.00'" in warnings[0] and "math_equal" in warnings[0]


# ---- MNLI and DROP: canonical files a user provides ----------------------------------------------------

MNLI_TSV = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
            "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
            "0\t63735\t63735n\tslate\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThe new rights are nice enough\t"
            "Everyone really likes the newest benefits \tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n"
            "1\t91383\t91383c\tgovernment\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThis site includes a list of all "
            "award winners.\tThe Government Executive articles housed on the website are not able to be searched.\t"
            "contradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n"
            "2\t755\t755e\tgovernment\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tuh i don't know \"i\" i have mixed emotions\t"
            "I like him for the most part.\tentailment\tneutral\tentailment\tentailment\tentailment\tentailment\n"
            "3\t1\t1n\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tNo consensus here.\tMaybe.\tneutral\tentailment\t"
            "contradiction\t\t\t-\n")

DROP_JSON = {
    "nfl_1184": {"passage": "The Bears scored 14 points in the first half and 7 in the second.", "qa_pairs": [
        {"question": "How many points did the Bears score?", "query_id": "q1",
         "answer": {"number": "21", "date": {"day": "", "month": "", "year": ""}, "spans": []},
         "validated_answers": [{"number": "21", "date": {"day": "", "month": "", "year": ""}, "spans": []}]},
        {"question": "Who scored?", "query_id": "q2",
         "answer": {"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": ["the Bears"]},
         "validated_answers": [{"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": ["Bears"]}]},
    ]},
}


def test_mnli_loader_reads_glues_tsv(tmp_path):
    (tmp_path / "dev_matched.tsv").write_text(MNLI_TSV)
    docs = B.mnli("matched", path=str(tmp_path / "dev_matched.tsv"))["test"]
    assert [d["label"] for d in docs] == [1, 2, 0]  # the '-' (no gold label) row is left out, as in GLUE
    assert docs[2]["premise"] == "uh i don't know \"i\" i have mixed emotions"
    assert docs[0]["hypothesis"] == "Everyone really likes the newest benefits "


def test_drop_loader_reads_the_canonical_json(tmp_path):
    (tmp_path / "drop_dataset_dev.json").write_text(json.dumps(DROP_JSON))
    docs = B.drop(path=str(tmp_path / "drop_dataset_dev.json"))["test"]
    assert [d["query_id"] for d in docs] == ["q1", "q2"]
    assert docs[1]["validated_answers"]["spans"] == [["Bears"]] and docs[0]["answer"]["number"] == "21"


@pytest.mark.parametrize("loader,kwargs,where", [("mnli", {"split": "matched"}, "glue/MNLI/dev_matched.tsv"),
                                                 ("mnli", {"split": "mismatched"}, "glue/MNLI/dev_mismatched.tsv"),
                                                 ("drop", {}, "drop/drop_dataset_dev.json")])
def test_missing_user_data_names_the_path(loader, kwargs, where):
    with pytest.raises(FileNotFoundError, match=f"{where} does not exist.*loader_options.path"):
        B.SHIPPED[loader](**kwargs)


def test_suites_name_every_table_column(make_cfg):
    tables = {"mind_the_gap": {"gsm8k", "math", "nq_open", "sudoku4"},
              "lmsi_in_domain": {"gsm8k", "drop", "arc_challenge", "openbookqa", "anli_r2_cot", "anli_r3_cot"},
              "lmsi_out_of_domain": {"aqua", "svamp", "strategyqa", "anli_r1_cot", "rte_cot", "mnli_cot",
                                     "mnli_mismatch_cot"}}
    for suite, columns in tables.items():
        cfg = make_cfg(f"eval={suite}")
        assert set(cfg.eval.benchmarks) == columns
        selected = set(cfg.eval.tasks or cfg.eval.benchmarks)
        assert columns - selected <= {"drop", "mnli_cot", "mnli_mismatch_cot"}  # the data that cannot ship


def test_selecting_mnli_or_drop_without_its_file_is_a_config_error(make_cfg, tmp_path):
    from crescent.config import ConfigError, validate

    cfg = make_cfg("stages=[eval]", "eval=lmsi_out_of_domain", "eval.tasks=[svamp,mnli_cot]")
    with pytest.raises(ConfigError, match=r"eval.benchmarks.mnli_cot.loader_options.path=None is invalid: "
                                          r".*glue/MNLI/dev_matched.tsv does not exist"):
        validate(cfg)
    (tmp_path / "dev.tsv").write_text(MNLI_TSV)
    validate(make_cfg("stages=[eval]", "eval=lmsi_out_of_domain", "eval.tasks=[svamp,mnli_cot]",
                      f"eval.benchmarks.mnli_cot.loader_options.path={tmp_path / 'dev.tsv'}",
                      f"eval.data_roots=[{tmp_path}]"))  # a file outside the launch dir: its folder allowed
    validate(make_cfg("stages=[eval]", "eval=lmsi_in_domain"))  # drop is not selected: fine
