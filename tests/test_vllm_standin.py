"""backend=vllm against the vLLM stand-in (tests/fake_vllm): independent sample streams, whole-stage engine calls,
engine arguments, engine shut down before train."""
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from crescent.utils.stage import StageResult

from helpers import ROOT, compose_cfg

FAKE = ROOT / "tests" / "fake_vllm"


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    """The stand-in first on sys.path (and for spawned workers through sys.path), its call log reset; removed after."""
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.setenv("FAKE_VLLM_LOG", str(tmp_path / "vllm_calls.jsonl"))
    from crescent.config import checks as config

    monkeypatch.setattr(config, "_cuda_device_count", lambda: 8)  # the stand-in plays an 8-GPU host for validate
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    import vllm

    assert Path(vllm.__file__).is_relative_to(FAKE)
    vllm.reset()
    yield vllm
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


class HashEmbedder:
    """Unit vectors from a hash of the text: identical texts are duplicates, others nearly orthogonal."""

    def encode(self, texts):
        rows = [np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big")).standard_normal(384)
                for t in texts]
        out = np.asarray(rows, dtype=np.float32).reshape(len(texts), 384)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _cfg(tmp_path, *overrides):
    return compose_cfg(["backend=vllm", "model@teacher=llama3_8b_instruct", "logger=none", *overrides], tmp_path)


def _backend(cfg):
    from crescent.backends import build_backend

    return build_backend(cfg.backend, cfg.teacher, cfg.paths.cache_dir, seed=int(cfg.seed))


def _pairs(calls, method=("generate", "chat")):
    return [tuple(map(str, s)) for c in calls if c["method"] in method for s in c["streams"]]


@pytest.mark.parametrize("n", [1, 4, 100])
def test_every_sample_of_a_bait_round_answer_and_verify_stage_has_its_own_stream(fake_vllm, tmp_path, n):
    from crescent.synth.answers import sample_answers
    from crescent.synth.questions import sample_raw_rounds
    from crescent.verify import verify_samples
    from crescent.verify.judge import HFJudge

    cfg = _cfg(tmp_path, f"sampling.question.n={n}", f"voting.k={n}", "questions.calls_per_round=4",
               "questions.max_calls=8", "sampling.answer_chunk=2", "verify=cot_binary")
    backend = _backend(cfg)
    work = tmp_path / "work"
    # bait: 2 rounds of 4 identical prompts x n samples, in one call
    sample_raw_rounds(cfg, work, [0, 1], lambda: backend)
    bait = [c for c in fake_vllm.CALLS if c["method"] == "chat"]
    assert len(bait) == 1 and len(bait[0]["prompts"]) == 8 and len(set(bait[0]["prompts"])) == 1
    pairs = _pairs(bait)
    assert len(pairs) == 8 * n == len(set(pairs))  # V1 child seeds s + j never collide across requests
    seeds = [p["seed"] for p in bait[0]["params"]]
    assert all(b - a == n for a, b in zip(seeds, seeds[1:]))  # a request per prompt: n children each, disjoint ranges
    # answers: 5 questions x k, chunks of 2 -> one call
    fake_vllm.reset()
    questions = [{"id": f"q{i}", "text": "What is 2 + 2?" if i < 3 else f"What is {i} + 1?"} for i in range(5)]
    sample_answers(cfg, work, questions, lambda: backend)
    assert [c["method"] for c in fake_vllm.CALLS] == ["chat"]
    pairs = _pairs(fake_vllm.CALLS)
    assert len(pairs) == 5 * n == len(set(pairs))
    # verify: every response judged once, sampled verify (T=1) streams distinct, in one call
    fake_vllm.reset()
    items = [{"id": "a", "question": "What is 2 + 2?", "responses": ["4"] * n, "answers": ["4"] * n},
             {"id": "b", "question": "What is 2 + 2?", "responses": ["4"] * n, "answers": ["4"] * n}]
    vcfg = dict(cfg.verify)
    vcfg["sampling"] = {**dict(vcfg.get("sampling") or {}), "temperature": 1.0}
    verify_samples(HFJudge(backend), items, vcfg, seed=3)
    assert len(fake_vllm.CALLS) == 1
    pairs = _pairs(fake_vllm.CALLS, ("generate", "chat"))
    assert len(pairs) == 2 * n == len(set(pairs))


def test_old_layout_would_replay_streams_and_the_standin_shows_it(fake_vllm):
    """The stand-in reproduces the bug of issue 18: seed + i per prompt with n children shares streams."""
    llm = fake_vllm.LLM("m")
    sp = [fake_vllm.SamplingParams(n=100, seed=7 + i) for i in range(4)]
    outs = llm.generate(["bait"] * 4, sp)
    assert sum(len(o.outputs) for o in outs) == 400
    assert len(set(_pairs(fake_vllm.CALLS))) == 103  # 400 samples, 103 distinct streams
    again = llm.generate(["bait"], [fake_vllm.SamplingParams(n=2, seed=8)])
    assert [o.text for o in again[0].outputs] == [outs[0].outputs[1].text, outs[0].outputs[2].text]


@pytest.mark.parametrize("max_calls", [pytest.param(550, marks=pytest.mark.slow, id="paper-550"),
                                       pytest.param(40, id="40")])
def test_paper_budget_engine_calls_grow_with_passes_not_questions(fake_vllm, tmp_path, monkeypatch, max_calls):
    """The paper preset (550 bait calls x n=100; the fast case: 40 of them, the same code path and call shape)."""
    import crescent.synth.embed as embed
    from crescent.synth import generate
    from crescent.synth.questions import engine_call_bound

    monkeypatch.setattr(embed, "get_embedder", lambda **kw: HashEmbedder())
    cfg = _cfg(tmp_path, "experiment=crescent_llama3_8b", "logger=none", "dedup.index=hnsw", "decontam=none",
               f"questions.max_calls={max_calls}")
    assert cfg.questions.max_calls == max_calls and cfg.sampling.question.n == 100
    manifest = generate.run(cfg).record
    bound = engine_call_bound(cfg)
    calls = [c for c in fake_vllm.CALLS if c["method"] in ("generate", "chat")]
    c = manifest["counts"]
    assert c["raw"] == max_calls * 100 and c["answered"] > max_calls * 70  # the budget really went through
    # bait <= passes x (1 + max_attempts) (= 1 x 3), answers 1: 4 calls for ~50k questions
    assert bound == {"passes": 1, "bait": 3, "answers": 1, "reflect": 0, "verify": 0, "total": 4}
    assert c["rewrites"] >= 1  # the stand-in's duplicates exercised the rewrite path
    assert len(calls) <= bound["total"]
    assert len(calls) == 1 + c["rewrites"] + 1
    assert sum(len(x["prompts"]) for x in calls[:1]) == max_calls  # one call: every bait request, n=100 each
    assert [x["method"] for x in fake_vllm.CALLS][-1] == "shutdown"


def test_engine_arguments_reach_vllm(fake_vllm, tmp_path):
    cfg = _cfg(tmp_path, "backend.tensor_parallel_size=2", "backend.dtype=bfloat16", "backend.max_model_len=2048",
               "seed=5")
    backend = _backend(cfg)
    kw = fake_vllm.CALLS[0]["kwargs"]
    assert (kw["tensor_parallel_size"], kw["dtype"], kw["max_model_len"], kw["seed"]) == (2, "bfloat16", 2048, 5)
    backend.close()
    assert fake_vllm.CALLS[-1]["method"] == "shutdown"
    with pytest.raises(RuntimeError, match="after close"):
        backend.generate(["x"], __import__("crescent.backends", fromlist=["SamplingParams"]).SamplingParams(), 0)


def test_data_parallel_size_starts_one_engine_per_gpu_set_with_the_same_rows(fake_vllm, tmp_path, monkeypatch):
    import json

    import crescent.synth.embed as embed
    from crescent.synth import generate

    monkeypatch.setattr(embed, "get_embedder", lambda **kw: HashEmbedder())
    small = ["debug=default", "model@teacher=llama3_8b_instruct", "sampling.num_questions=null",
             "questions.max_calls=8", "questions.calls_per_round=2", "dedup=none", "questions.rounds_per_pass=null"]
    ref = generate.run(_cfg(tmp_path / "d1", *small))
    ref_rows = (Path(ref.artifacts["cache_dir"]) / "sft.jsonl").read_text()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    out = generate.run(_cfg(tmp_path / "d2", *small, "backend.data_parallel_size=2", "backend.tensor_parallel_size=2",
                            "backend.dtype=float16", "backend.max_model_len=1024"))
    assert (Path(out.artifacts["cache_dir"]) / "sft.jsonl").read_text() == ref_rows
    records = [json.loads(x) for x in Path(tmp_path / "vllm_calls.jsonl").read_text().splitlines()]
    engines = [r for r in records if r["method"] == "LLM" and r["pid"] != __import__("os").getpid()]
    assert engines and {r["CUDA_VISIBLE_DEVICES"] for r in engines} <= {"0,1", "2,3"}  # each its own GPU set
    assert all((r["kwargs"]["tensor_parallel_size"], r["kwargs"]["dtype"], r["kwargs"]["max_model_len"])
               == (2, "float16", 1024) for r in engines)
    worker_pids = {r["pid"] for r in engines}
    assert sum(r["method"] == "shutdown" and r["pid"] in worker_pids for r in records) == len(engines)
    from crescent.backends.workers import worker_devices

    assert worker_devices({"name": "vllm", "tensor_parallel_size": 2}, 2) == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                                                             {"CUDA_VISIBLE_DEVICES": "2,3"}]


def test_too_few_gpus_for_data_parallel_is_an_error_naming_the_key(fake_vllm, tmp_path, monkeypatch):
    from crescent.synth import generate

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    cfg = _cfg(tmp_path, "debug=default", "model@teacher=llama3_8b_instruct", "dedup=none",
               "backend.data_parallel_size=2")
    with pytest.raises(RuntimeError, match="backend.data_parallel_size=2"):
        generate.run(cfg)


def test_engine_is_shut_down_before_train_starts(fake_vllm, tmp_path, monkeypatch):
    import crescent.synth.embed as embed
    import crescent.train.stage as train_stage
    from crescent import pipeline

    monkeypatch.setattr(embed, "get_embedder", lambda **kw: HashEmbedder())
    monkeypatch.setattr(train_stage, "run", lambda cfg, *a, **k: fake_vllm.CALLS.append({"method": "train"}) or StageResult())
    cfg = _cfg(tmp_path, "debug=default", "model@teacher=llama3_8b_instruct", "stages=[generate,train]")
    pipeline.run(cfg)
    methods = [c["method"] for c in fake_vllm.CALLS]
    assert "train" in methods and "shutdown" in methods
    assert methods.index("shutdown") < methods.index("train")
