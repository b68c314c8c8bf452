"""Vote -> SFT rows (pure logic over extracted answers)."""
from crescent.synth.sft import build_sft_rows


def item(qid, answers, responses=None):
    responses = responses or [f"response {i} #### {a}" for i, a in enumerate(answers)]
    return {"id": qid, "question": f"question {qid}?", "responses": responses, "answers": answers}


def test_rows_use_a_response_that_agrees_with_the_majority():
    rows, counts = build_sft_rows([item("a", ["3", "5", "5"])], tie="first", min_agreement=0.0, seed=0)
    (row,) = rows
    assert row["answer"] == "5" and row["response_index"] == 1
    assert row["messages"] == [{"role": "user", "content": "question a?"},
                               {"role": "assistant", "content": "response 1 #### 5"}]
    assert (row["count"], row["k"], row["agreement"]) == (2, 3, 2 / 3)
    assert counts["kept"] == 1 and counts["answers"] == 3 and counts["unparseable_answers"] == 0


def test_equivalent_answers_vote_together():
    rows, _ = build_sft_rows([item("a", ["0.75", "3/4", "1"])], tie="first", min_agreement=0.0, seed=0)
    assert rows[0]["count"] == 2 and rows[0]["response_index"] == 0


def test_drops_are_counted_by_reason():
    answered = [item("none", [None, None, None]), item("tie", ["1", "2", None]), item("weak", ["1", "2", "2"]),
                item("ok", ["4", "4", "4"])]
    rows, counts = build_sft_rows(answered, tie="drop", min_agreement=0.9, seed=0)
    assert [r["id"] for r in rows] == ["ok"]
    assert counts["dropped_no_valid_answer"] == 1
    assert counts["dropped_tie"] == 1
    assert counts["dropped_below_min_agreement"] == 1
    assert counts["unparseable_answers"] == 4 and counts["kept"] == 1


def test_tie_first_keeps_the_earliest_answer():
    rows, _ = build_sft_rows([item("t", ["7", "9"])], tie="first", min_agreement=0.0, seed=0)
    assert rows[0]["answer"] == "7"


def test_random_tie_is_seeded():
    answered = [item(f"q{i}", ["1", "2"]) for i in range(20)]
    a, _ = build_sft_rows(answered, tie="random", min_agreement=0.0, seed=1)
    b, _ = build_sft_rows(answered, tie="random", min_agreement=0.0, seed=1)
    assert [r["answer"] for r in a] == [r["answer"] for r in b]
    assert {r["answer"] for r in a} == {"1", "2"}
