"""The benchmark data shipped in crescent/data: intact, licensed, and loaded as lm-eval docs."""
import hashlib

import pytest

from crescent.data import benchmarks as B

COUNTS = {  # test docs, few-shot pool (see crescent/data/README.md)
    "gsm8k": (1319, 7473), "asdiv": (2159, 7473), "gsm_plus_mini": (2100, 7473), "mmlu": (14042, 285),
    "arc_challenge": (1172, 1119), "arc_easy": (2376, 2251), "truthfulqa_mc": (817, 0),
    "hellaswag": (10042, 0), "winogrande": (1267, 0), "piqa": (1838, 0),
    # LMSI / Mind the Gap (other subsets and rounds: tests/test_eval_benchmarks.py)
    "math": (5000, 0), "svamp": (1000, 7473), "aqua": (254, 254), "strategyqa": (2290, 0), "anli": (1000, 1000),
    "rte": (277, 0), "openbookqa": (500, 0), "nq_open": (3610, 0), "sudoku": (288, 0),
}


def test_every_shipped_file_matches_its_checksum():
    lines = (B.DATA_DIR / "SHA256SUMS").read_text().splitlines()
    assert len(lines) > 200
    for line in lines:
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((B.DATA_DIR / name).read_bytes()).hexdigest() == digest, name


def test_each_dataset_ships_its_licence_and_provenance():
    readme = (B.DATA_DIR / "README.md").read_text()
    assert "CC BY-NC 4.0" in readme and "non-commercial" in readme
    assert "ANLI" in readme and readme.count("non-commercial") >= 2
    for folder in ("gsm8k", "mmlu", "truthfulqa", "hellaswag", "math", "svamp", "aqua", "strategyqa", "anli",
                   "openbookqa", "nq_open"):
        assert (B.DATA_DIR / folder / "LICENSE").is_file()
    for licence_in_readme in ("asdiv/README.md", "piqa/README.md", "winogrande/winogrande_1.1/README.md"):
        assert (B.DATA_DIR / licence_in_readme).is_file()


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_loader_counts(name):
    docs = B.SHIPPED[name]()
    assert (len(docs["test"]), len(docs["fewshot"])) == COUNTS[name]


def test_math_docs_carry_a_hash_marked_numeric_answer():
    for name in ("asdiv", "gsm_plus_mini"):
        for doc in B.SHIPPED[name]()["test"]:
            assert doc["answer"].startswith("#### ") and doc["answer"][5:].strip(), (name, doc)
    asdiv = B.asdiv()["test"][0]
    assert asdiv["question"] == ("Seven red apples and two green apples are in the basket. "
                                 "How many apples are in the basket?") and asdiv["answer"] == "#### 9"
    everything = B.gsm_plus_mini(include_critical_thinking=True)["test"]
    assert len(everything) == 2400 and sum(d["answer"] == "#### None" for d in everything) == 300


def test_multiple_choice_docs_are_well_formed():
    for doc in B.arc_challenge()["test"]:
        assert doc["answerKey"] in doc["choices"]["label"]
    assert {d["label"] for d in B.hellaswag()["test"]} == {0, 1, 2, 3}
    assert B.piqa()["test"][0]["label"] == 0
    tqa = B.truthfulqa_mc()["test"][0]
    assert tqa["mc1_targets"]["labels"][0] == 1 and sum(tqa["mc1_targets"]["labels"]) == 1
    mmlu = B.mmlu()["test"]
    assert len({d["subject"] for d in mmlu[:57]}) == 57  # interleaved: any limit >= 57 sees every subject


def test_user_files_in_three_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"q": "1+1?", "a": "2"}\n\n{"q": "2+2?", "a": "4"}\n')
    (tmp_path / "a.json").write_text('{"data": [{"q": "1+1?", "a": "2"}]}')
    (tmp_path / "a.csv").write_text("q,a\n\"1+1, twice?\",4\n")
    assert B.read_file(tmp_path / "a.jsonl")[1] == {"q": "2+2?", "a": "4"}
    assert B.read_file(tmp_path / "a.json") == [{"q": "1+1?", "a": "2"}]
    assert B.read_file(tmp_path / "a.csv") == [{"q": "1+1, twice?", "a": "4"}]
    docs = B.load_docs({"loader": "file", "path": "a.csv"}, base_dir=tmp_path)
    assert docs == {"test": [{"q": "1+1, twice?", "a": "4"}], "fewshot": []}
    (tmp_path / "bad.txt").write_text("x")
    (tmp_path / "empty.json").write_text("[]")
    for bad, message in (("bad.txt", "expected .jsonl"), ("empty.json", "non-empty list"), ("nope.csv", "does not exist")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            B.read_file(tmp_path / bad)
