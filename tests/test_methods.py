"""LMSI (dataset questions, all agreeing paths, four formats), seed augmentation, reflection, and the
iterative round loop."""
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from crescent import pipeline
from crescent.config import ConfigError, config_hash, synth_config, validate
from crescent.synth.formats import format_messages
from crescent.synth.reflect import outcome, reflect
from crescent.synth.sft import build_sft_rows
from crescent.synth.verified import apply_kept, verify_answers
from crescent.synth.sources import answer_prompt, bait_prompt, dataset_questions, round_prompts
from crescent.utils.io import read_json, read_jsonl

EX = [{"question": "Tom has 2 apples and gets 3 more. How many?", "cot": "2 + 3 = 5. The answer is 5.", "answer": "5"}]
RESPONSE = "She has 4 + 4 = 8. The answer is 8."


@pytest.mark.parametrize("fmt,user,reply", [
    ("chat", "Q?", RESPONSE),
    ("cot_fewshot", "Q: Tom has 2 apples and gets 3 more. How many?\nA: 2 + 3 = 5. The answer is 5.\n\nQ: Q?\nA:", RESPONSE),
    ("direct_fewshot", "Q: Tom has 2 apples and gets 3 more. How many?\nA: The answer is 5.\n\nQ: Q?\nA:", "The answer is 8."),
    ("cot_zeroshot", "Q: Q?\nA: Let's think step by step.", RESPONSE),
    ("direct_zeroshot", "Q: Q?\nA:", "The answer is 8."),
])
def test_the_four_lmsi_formats_and_chat(fmt, user, reply):
    assert format_messages(fmt, "Q?", RESPONSE, "8", EX) == [{"role": "user", "content": user},
                                                            {"role": "assistant", "content": reply}]
    with pytest.raises(ValueError, match="unknown training format"):
        format_messages("cot_tenshot", "Q?", RESPONSE, "8", EX)


def _item(answers, qid="q1"):
    return {"id": qid, "question": "Q?", "answers": answers, "responses": [f"r{i} {a}" for i, a in enumerate(answers)]}


def test_keep_all_agreeing_paths_in_every_format():
    rows, counts = build_sft_rows([_item(["8", "8", "6", None, "8.0"])], tie="first", min_agreement=0.0, seed=0,
                                  keep="all_agreeing", formats=["cot_fewshot", "direct_zeroshot"], exemplars=EX)
    assert len(rows) == 6 and counts["kept_responses"] == 3 and counts["kept_questions"] == 1
    assert [r["response_index"] for r in rows] == [0, 0, 1, 1, 4, 4] and len({r["id"] for r in rows}) == 6
    assert rows[1]["messages"][1]["content"] == "The answer is 8." and rows[0]["messages"][1]["content"] == "r0 8"
    first, _ = build_sft_rows([_item(["8", "8", "6"])], tie="first", min_agreement=0.0, seed=0)
    assert [r["id"] for r in first] == ["q1"] and first[0]["format"] == "chat"  # Crescent rows keep their ids


def test_reflection_outcomes_and_a_revision_replaces_the_majority():
    assert (outcome("8", "8.0"), outcome("8", "9"), outcome("8", None)) == ("confirmed", "revised", "invalid")
    revised = {**_item(["8", "8", "6"]), "reflection": {"text": "Fixed: #### 9", "answer": "9", "outcome": "revised"}}
    rows, _ = build_sft_rows([revised], tie="first", min_agreement=0.0, seed=0)
    assert rows[0]["answer"] == "9" and rows[0]["messages"][1]["content"] == "Fixed: #### 9"
    assert rows[0]["reflection"] == "revised"
    kept, _ = build_sft_rows([{**_item(["8", "8"]), "reflection": {"text": "x", "answer": None, "outcome": "invalid"}}],
                             tie="first", min_agreement=0.0, seed=0)
    assert kept[0]["answer"] == "8" and kept[0]["messages"][1]["content"] == "r0 8"


class Scripted:
    """A scripted judge for the reflection pass's bookkeeping (pure logic)."""

    def __init__(self, replies):
        self.replies, self.calls = replies, 0

    def generate(self, prompts, params, seed):
        self.calls += 1
        return [[self.replies[p[0]["content"].split("Problem: ")[1].split("\n")[0]]] for p in prompts]


def test_reflection_pass_is_counted_and_resumable(make_cfg, tmp_path):
    cfg = make_cfg("debug=default", "voting.reflect=true", "sampling.answer_chunk=2")
    answered = [dict(_item(["8", "8"], "a"), question="A?"), dict(_item(["3", "4", "4"], "b"), question="B?"),
                dict(_item([None, None], "c"), question="C?")]
    judge = Scripted({"A?": "Checked. #### 8", "B?": "Wrong, it is #### 5"})
    out, counts = reflect(cfg, tmp_path, answered, lambda: judge)
    assert counts == {"reflect_confirmed": 1, "reflect_revised": 1} and "reflection" not in out[2]
    assert out[1]["reflection"] == {"id": "b", "text": "Wrong, it is #### 5", "answer": "5", "majority": "4",
                                    "outcome": "revised"}
    again, _ = reflect(cfg, tmp_path, answered, lambda: (_ for _ in ()).throw(AssertionError("regenerated")))
    assert again == out and judge.calls == 1


def test_dataset_questions_read_only_the_question_field(tmp_path):
    qcfg = OmegaConf.create({"dataset": {"loader": "gsm8k_train", "path": None, "question_field": "question", "offset": 2}})
    questions = dataset_questions(qcfg)
    assert len(questions) == 7471 and questions[0].startswith("Betty is saving money")
    (tmp_path / "u.csv").write_text("problem,solution\nWhat is 1+1?,SECRET 2\nWhat is 2+2?,SECRET 4\n")
    qcfg = OmegaConf.create({"dataset": {"loader": "file", "path": str(tmp_path / "u.csv"), "question_field": "problem"}})
    assert dataset_questions(qcfg) == ["What is 1+1?", "What is 2+2?"]
    with pytest.raises(ValueError, match="question_field='question' is not a field"):
        dataset_questions(OmegaConf.create({"dataset": {**qcfg.dataset, "question_field": "question"}}))


def test_lmsi_answer_prompt_is_a_few_shot_completion(make_cfg):
    cfg = make_cfg("questions=dataset")
    prompt = answer_prompt(cfg.questions, "How many legs do 2 cats have?")
    assert isinstance(prompt, str) and prompt.startswith("Q: There are 15 trees")
    assert prompt.endswith("Q: How many legs do 2 cats have?\nA:") and prompt.count("The answer is") == 4
    assert answer_prompt(make_cfg().questions, "Why?")[0]["role"] == "user"  # Crescent: a chat turn


def test_seed_augment_and_seed_bait_prompts(make_cfg):
    cfg = make_cfg("questions=seed_augment", "questions.calls_per_round=2")
    prompts, meta = round_prompts(cfg, 1, 2)
    assert [m["style"] for m in meta] == ["rephrase", "harder", "rephrase", "harder"]
    assert [m["seed_index"] for m in meta] == [2, 2, 3, 3]
    seeds = dataset_questions(cfg.questions)
    assert prompts[0][0]["content"].endswith(seeds[2]) and "harder" in prompts[1][0]["content"]
    seeded = bait_prompt(make_cfg("questions=lmsi_seed_bait").questions)
    assert "1. Natalia sold clips" in seeded and "\n10. " in seeded and "\n11. " not in seeded


@pytest.mark.parametrize("overrides,message", [
    (["questions=dataset", "questions.dataset.loader=file"], "questions.dataset.path=None"),
    (["questions.formats=[chat,essay]"], "questions.formats"),
    (["voting.keep=some"], "voting.keep"),
    (["rounds=2", "stages=[generate]"], "rounds=2 is invalid without the train stage"),
    (["questions=dataset", "questions.exemplars=[]"], "need exemplars"),
    (["questions.prompt=''"], "needs a non-empty bait prompt"),
])
def test_method_config_errors(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*overrides))


def test_lmsi_and_seed_augment_generate_end_to_end_on_the_tiny_model(make_cfg, tmp_path):
    cfg = make_cfg("debug=default", "questions=dataset", "voting=lmsi", "voting.k=2", "dedup=none",
                   "sampling.num_questions=3", "sampling.answer.max_new_tokens=16")
    manifest = pipeline.run(cfg)["generate"].record
    qs = list(read_jsonl(tmp_path / "run" / "synth" / "questions.jsonl"))
    assert [q["id"] for q in qs] == ["d000000", "d000001", "d000002"] and qs[0]["text"].startswith("Natalia")
    assert manifest["counts"]["answered"] == 3 and manifest["counts"]["bait_calls"] == 0
    cfg = make_cfg("debug=default", "questions=seed_augment", "questions.calls_per_round=1", "questions.max_calls=2",
                   "sampling.question.n=1", "sampling.num_questions=null", "dedup=none",
                   f"paths.output_dir={tmp_path}/run2", "voting.reflect=true")
    manifest = pipeline.run(cfg)["generate"].record
    rounds = sorted((Path(manifest["stage_dirs"]["questions"]) / "rounds").glob("round_*.json"))
    styles = [r.get("style") for rd in rounds for r in read_json(rd)["raw"]]
    assert manifest["counts"]["raw"] == 4 and styles == ["rephrase", "harder"] * 2


def test_two_rounds_chain_the_exports_and_summarise(make_cfg, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                          {"role": "assistant", "content": f"{i} + 1 = {i + 1}. #### {i + 1}"}]} for i in range(8)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg("debug=default", "rounds=2", "stages=[train,eval]", f"train.data={data}", "train.epochs=1",
                   "train.max_seq_len=64", "eval=smoke", "eval.tasks=[arc_challenge]", "eval.limit=2",
                   "eval.dtype=float32")
    out = pipeline.run(cfg)["rounds"]
    root = tmp_path / "run"
    r1 = read_json(root / "round_1" / "train_result.json")
    assert r1["student"] == "tiny_llama-round1"
    hydra_cfg = read_json(root / "round_1" / "eval" / "results.json")["models"]["base"]
    assert hydra_cfg["path"] == str(root / "round_0" / "hf_export")  # round 1 starts from round 0's export
    assert [s["round"] for s in out.record["rounds"]] == [0, 1] and "round1/arc_challenge/acc" in out.metrics
    assert (root / "rounds" / "summary.png").stat().st_size > 1000
    assert (root / "rounds" / "summary.md").read_text().count("\n| ") == 3  # header + 2 rounds
    assert read_json(root / "status.json")["status"] == "ok"


def test_apply_kept_drops_rejected_samples_before_the_vote():
    item = {"id": "q", "question": "Q?", "responses": ["a", "b", "c"], "answers": ["1", "2", "2"]}
    out = apply_kept([item], [[True, False, True]], [[0.9, 0.1, 0.7]])
    assert out[0]["answers"] == ["1", "2"] and out[0]["responses"] == ["a", "c"]
    assert out[0]["verify_scores"] == [0.9, 0.7] and out[0]["verified_from"] == 3
    assert item["answers"] == ["1", "2", "2"]  # input untouched


def test_verify_in_the_generate_stage_filters_and_records(make_cfg, tmp_path):
    base = ("debug=default", "questions=dataset", "voting.k=3", "dedup=none", "sampling.num_questions=3",
            "sampling.answer.max_new_tokens=16")
    cfg = make_cfg(*base, "verify=mc", "verify.threshold=0.99")
    manifest = pipeline.run(cfg)["generate"].record
    counts, work = manifest["counts"], Path(manifest["cache_dir"])
    assert counts["verify_verifier"] == "mc" and counts["verify_samples"] == 9
    assert counts["verify_kept"] + counts["verify_rejected"] == 9
    rejections = [r for r in read_jsonl(tmp_path / "run" / "synth" / "rejections.jsonl") if r["stage"] == "verify"]
    assert len(rejections) == counts["verify_rejected"] and all(r["score"] < 0.99 for r in rejections)
    plain = make_cfg(*base, f"paths.output_dir={tmp_path}/plain")
    assert config_hash(plain) != config_hash(cfg) and "verify" not in synth_config(plain)  # none: old cache keys
    vdir = Path(manifest["stage_dirs"]["verify"])
    record = read_json(vdir / "verify" / "result.json")
    out, rej, _ = verify_answers(cfg, vdir, list(read_jsonl(work / "answers.jsonl")),
                                 lambda: (_ for _ in ()).throw(AssertionError("re-verified")))
    assert rej == record["rejections"] and sum(len(o["answers"]) for o in out) == counts["verify_kept"]
