"""Reuse across a sweep: per-stage synth cache keys (crescent/synth/keys.py), nested-k answer samples
(sampling.nested_k) and the shared base-model eval cache (paths.eval_cache)."""
from collections import Counter
from pathlib import Path

from conftest import compose_cfg
from crescent import pipeline
from crescent.synth import keys
from crescent.utils.io import read_json, read_jsonl

TINY = ["debug=default", "logger=none"]
SWEEP = [*TINY, "stages=[generate,eval]", "eval=smoke", "eval.tasks=[arc_challenge]", "eval.limit=2",
         "eval.max_gen_toks=8", "eval.dtype=float32", "eval.models=[base]", "sampling.nested_k=true"]


def _cfg(tmp_path: Path, name: str, *overrides: str, cache: str = "cache"):
    return compose_cfg([*overrides, f"paths.output_dir={tmp_path}/{name}",
                        f"paths.synth_cache={tmp_path}/{cache}/synth",
                        f"paths.eval_cache={tmp_path}/{cache}/eval", "print_config=false"])


def test_question_key_ignores_voting_and_answer_sampling(tmp_path):
    base = _cfg(tmp_path, "a", *TINY)
    qkey, akey, vkey = keys.question_key(base), keys.answer_key(base), keys.verify_key(base)
    for same_questions in (["voting.k=5"], ["voting.tie=random"], ["voting.min_agreement=0.5"], ["verify=mc"],
                           ["sampling.answer.temperature=0.3"], ["sampling.answer_chunk=3"], ["voting=single"],
                           ["questions.answer_stop=[STOP]"], ["sampling.nested_k=true"]):
        assert keys.question_key(_cfg(tmp_path, "b", *TINY, *same_questions)) == qkey, same_questions
    for new_questions in (["seed=7"], ["sampling.question.temperature=0.3"], ["dedup.threshold=0.5"], ["dedup=none"],
                          ["questions.max_calls=4"], ["sampling.num_questions=3"],
                          ["model@teacher=smollm2_135m_instruct"]):
        assert keys.question_key(_cfg(tmp_path, "b", *TINY, *new_questions)) != qkey, new_questions
    # answers: the question key + answer sampling + k (unless nested); votes and verification do not change them
    assert keys.answer_key(_cfg(tmp_path, "b", *TINY, "voting.k=5")) != akey
    assert keys.answer_key(_cfg(tmp_path, "b", *TINY, "sampling.answer.temperature=0.3")) != akey
    assert keys.answer_key(_cfg(tmp_path, "b", *TINY, "seed=7")) != akey
    for same_answers in (["voting.tie=random"], ["voting.min_agreement=0.5"], ["voting.keep=all_agreeing"],
                         ["verify=mc"]):
        assert keys.answer_key(_cfg(tmp_path, "b", *TINY, *same_answers)) == akey, same_answers
    nested = [keys.answer_key(_cfg(tmp_path, "b", *TINY, "sampling.nested_k=true", f"voting.k={k}")) for k in (1, 3, 8)]
    assert len(set(nested)) == 1 and nested[0] != akey
    # verification: the answer key + k + reflection + verify; the vote's policy does not change it
    assert keys.verify_key(_cfg(tmp_path, "b", *TINY, "verify=mc")) != vkey
    assert keys.verify_key(_cfg(tmp_path, "b", *TINY, "voting.reflect=true")) != vkey
    assert keys.verify_key(_cfg(tmp_path, "b", *TINY, "voting.min_agreement=0.5")) == vkey
    assert keys.verify_key(_cfg(tmp_path, "b", *TINY, "sampling.nested_k=true", "voting.k=3")) != \
        keys.verify_key(_cfg(tmp_path, "b", *TINY, "sampling.nested_k=true", "voting.k=4"))
    dirs = keys.stage_dirs(base)
    assert dirs["questions"] == tmp_path / "cache" / "synth" / "questions" / qkey
    assert dirs["final"] == keys.sft_path(base).parent == tmp_path / "cache" / "synth" / keys.stage_keys(base)["final"]


def test_voting_k_sweep_generates_questions_once_and_scores_the_base_model_once(tmp_path, monkeypatch):
    """A 3-job voting.k sweep (k = 2, 4, 3, nested) sharing one cache, as `crescent -m voting.k=2,4,3` runs it."""
    import crescent.backends
    from crescent.eval import stage as eval_stage
    from crescent.synth import questions

    calls = Counter()

    def counting(module, name):
        real = getattr(module, name)

        def wrapper(*a, **k):
            calls[name] += 1
            return real(*a, **k)

        monkeypatch.setattr(module, name, wrapper)

    counting(questions, "sample_raw_rounds")
    counting(questions, "dedup_pass")
    counting(crescent.backends, "build_backend")
    counting(eval_stage, "_score_unit")

    jobs = {}
    for k in (2, 4, 3):
        before = Counter(calls)
        out = pipeline.run(_cfg(tmp_path, f"job_k{k}", *SWEEP, f"voting.k={k}"))
        jobs[k] = {"out": out, "calls": calls - before, "dir": tmp_path / f"job_k{k}"}

    cache = tmp_path / "cache" / "synth"
    # questions: one question-stage folder, its passes sampled and deduplicated once for the whole sweep
    assert len(list((cache / "questions").iterdir())) == 1
    n_passes = len(list(cache.glob("questions/*/rounds/round_*.json")))
    assert n_passes >= 1 and calls["dedup_pass"] == n_passes and calls["sample_raw_rounds"] == n_passes
    assert jobs[4]["calls"]["dedup_pass"] == jobs[3]["calls"]["dedup_pass"] == 0
    texts = {k: (j["dir"] / "synth" / "questions.jsonl").read_text() for k, j in jobs.items()}
    assert texts[2] == texts[3] == texts[4] and texts[2]
    assert len(list(cache.glob("*/manifest.json"))) == 3  # one finished folder per k
    # answers: one answer folder, every (chunk, sample) unit written once; k=3 after k=4 loads no model at all
    assert len(list((cache / "answers").iterdir())) == 1
    n_questions = len(texts[2].splitlines())
    n_chunks = -(-n_questions // 2)  # debug=default: sampling.answer_chunk=2
    assert len(list(cache.glob("answers/*/answers/chunk_*_s*.json"))) == n_chunks * 4
    assert jobs[2]["calls"]["build_backend"] == jobs[4]["calls"]["build_backend"] == 1
    assert jobs[3]["calls"]["build_backend"] == 0
    answered = {k: list(read_jsonl(j["dir"] / "synth" / "answers.jsonl")) for k, j in jobs.items()}
    for k in (2, 3):
        for small, large in zip(answered[k], answered[4], strict=True):
            assert small["id"] == large["id"] and len(small["responses"]) == k
            assert small["responses"] == large["responses"][:k] and small["answers"] == large["answers"][:k]
    # the base model: scored by the first job, read from paths.eval_cache by the others
    n_units = len(jobs[2]["out"]["eval"].record["shared_cache_hits"]) + jobs[2]["calls"]["_score_unit"]
    assert calls["_score_unit"] == jobs[2]["calls"]["_score_unit"] == n_units >= 1
    assert jobs[2]["out"]["eval"].record["shared_cache_hits"] == []
    rows = {k: read_json(j["dir"] / "eval" / "results.json")["rows"] for k, j in jobs.items()}
    assert rows[2] == rows[3] == rows[4]
    for k in (3, 4):
        assert len(jobs[k]["out"]["eval"].record["shared_cache_hits"]) == n_units
        assert (j := jobs[k]["dir"] / "eval" / "samples_base_arc_challenge_0shot.jsonl").read_text() == \
            (jobs[2]["dir"] / "eval" / "samples_base_arc_challenge_0shot.jsonl").read_text(), j
    assert len(list((tmp_path / "cache" / "eval" / "base").iterdir())) == n_units


def test_nested_k_streams_make_smaller_k_a_prefix_of_larger_k_without_a_shared_cache(tmp_path):
    """The prefix property comes from the per-sample streams, not from reading the same files: k=2 and k=3 generated
    in two separate caches agree on the first two samples of every question."""
    gen = [*TINY, "stages=[generate]", "sampling.nested_k=true"]
    small = pipeline.run(_cfg(tmp_path, "k2", *gen, "voting.k=2", cache="c2"))["generate"].record
    large = pipeline.run(_cfg(tmp_path, "k3", *gen, "voting.k=3", cache="c3"))["generate"].record
    assert not small["cache_hit"] and not large["cache_hit"]
    a = list(read_jsonl(tmp_path / "k2" / "synth" / "answers.jsonl"))
    b = list(read_jsonl(tmp_path / "k3" / "synth" / "answers.jsonl"))
    assert a and [r["id"] for r in a] == [r["id"] for r in b]
    assert all(x["responses"] == y["responses"][:2] for x, y in zip(a, b))
    assert any(len(set(y["responses"])) > 1 for y in b)  # sampled, not greedy copies


def test_nested_answer_units_resume_to_the_same_bytes(tmp_path):
    """Killed halfway (half the (chunk, sample) units deleted) the rerun rewrites the same bytes (the default layout
    is covered by tests/test_generate.py::test_sigkill_mid_generation_then_rerun_gives_identical_rows)."""
    gen = [*TINY, "stages=[generate]", "sampling.nested_k=true", "voting.k=3"]
    pipeline.run(_cfg(tmp_path, "ref", *gen))
    ref = (tmp_path / "ref" / "synth" / "answers.jsonl").read_bytes()
    cache = tmp_path / "cache" / "synth"
    for manifest in cache.glob("*/manifest.json"):
        manifest.unlink()
    units = sorted(cache.glob("answers/*/answers/chunk_*.json"))
    for unit in units[::2]:
        unit.unlink()
    pipeline.run(_cfg(tmp_path, "again", *gen))
    assert (tmp_path / "again" / "synth" / "answers.jsonl").read_bytes() == ref
