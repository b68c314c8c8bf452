"""The real embedded SmolLM2-135M-Instruct through the whole generate stage (minutes on CPU)."""
import numpy as np
import pytest

from crescent import pipeline
from crescent.utils.io import read_jsonl

pytestmark = pytest.mark.slow


def test_embedded_model_generates_sft_rows(make_cfg, tmp_path):
    cfg = make_cfg("stages=[generate]", "sampling.num_questions=4", "voting.k=3", "sampling.question.n=8",
                   "questions.calls_per_round=2", "sampling.answer.max_new_tokens=256")
    manifest = pipeline.run(cfg)["generate"].record
    c = manifest["counts"]
    assert c["accepted"] == 4, c
    synth = tmp_path / "run" / "synth"
    questions = [q["text"] for q in read_jsonl(synth / "questions.jsonl")]
    assert all(len(q.split()) >= 5 for q in questions)
    from crescent.synth.embed import get_embedder

    emb = get_embedder().encode(questions)
    assert (emb @ emb.T - 2 * np.eye(len(questions))).max() < cfg.dedup.threshold
    rows = list(read_jsonl(synth / "sft.jsonl"))
    assert c["kept"] == len(rows) and c["answers"] == 12
    assert c["unparseable_answers"] < 12  # a chat model follows the '#### Answer:' cue at least sometimes
