"""The generate stage end to end on tiny_llama: outputs, cache reuse, SIGKILL + resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT
from crescent import pipeline
from crescent.config import config_hash
from crescent.utils.io import read_json, read_jsonl

TINY = ["debug=default"]
# many small units of work, so a kill lands mid-way
RESUME = ["debug=default", "sampling.num_questions=8", "sampling.question.n=4", "questions.calls_per_round=1",
          "questions.max_calls=16", "sampling.answer_chunk=1", "voting.k=2", "sampling.question.max_new_tokens=16",
          "sampling.answer.max_new_tokens=16"]


def test_tiny_llama_generate_writes_outputs(make_cfg, tmp_path):
    cfg = make_cfg(*TINY)
    manifest = pipeline.run(cfg)["generate"].record
    synth = tmp_path / "run" / "synth"
    for name in ("manifest.json", "questions.jsonl", "sft.jsonl", "rejections.jsonl"):
        assert (synth / name).exists(), name
    assert read_json(tmp_path / "run" / "status.json")["status"] == "ok"
    c = manifest["counts"]
    assert c["raw"] == c["bait_calls"] * cfg.sampling.question.n
    assert c["accepted"] <= cfg.sampling.num_questions
    questions = list(read_jsonl(synth / "questions.jsonl"))
    assert len(questions) == c["accepted"] == c["answered"]
    assert len({q["id"] for q in questions}) == len(questions)
    rows = list(read_jsonl(synth / "sft.jsonl"))
    assert len(rows) == c["kept"] <= c["accepted"]
    for r in rows:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert r["messages"][0]["content"] == r["question"]
        assert r["votes"][r["response_index"]] == r["answer"]
        assert r["agreement"] == r["count"] / r["k"]
    assert manifest["config_hash"] == config_hash(cfg)


def test_accepted_questions_are_below_threshold(make_cfg, tmp_path):
    from crescent.synth.embed import get_embedder

    cfg = make_cfg(*TINY, "dedup.threshold=0.6")
    pipeline.run(cfg)
    texts = [q["text"] for q in read_jsonl(tmp_path / "run" / "synth" / "questions.jsonl")]
    emb = get_embedder().encode(texts)
    sims = emb @ emb.T - 2 * np.eye(len(texts))
    assert sims.max(initial=-1) < 0.6


def test_second_run_reuses_cache_without_loading_a_model(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(*TINY)
    first = pipeline.run(cfg)["generate"].record
    import crescent.backends

    monkeypatch.setattr(crescent.backends, "build_backend", lambda *a, **k: pytest.fail("model loaded on a cache hit"))
    second = pipeline.run(cfg)["generate"].record
    assert second["cache_hit"] and not first["cache_hit"]
    assert second["counts"] == first["counts"]


def test_failure_writes_status_failed(make_cfg, tmp_path, monkeypatch):
    import crescent.synth.generate as gen

    monkeypatch.setattr(gen, "generate_questions", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        pipeline.run(make_cfg(*TINY))
    status = read_json(tmp_path / "run" / "status.json")
    assert status["status"] == "failed" and "boom" in status["error"] and "Traceback" in status["traceback"]


def _start(cache: Path, run_dir: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "crescent", *RESUME, f"paths.synth_cache={cache}", f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _kill_when(proc: subprocess.Popen, ready, timeout=240) -> None:
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() - t0 < timeout
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _outputs(run_dir: Path) -> tuple:
    synth = run_dir / "synth"
    manifest = read_json(synth / "manifest.json")
    return ((synth / "questions.jsonl").read_text(), (synth / "sft.jsonl").read_text(),
            (synth / "rejections.jsonl").read_text(), json.dumps(manifest["counts"], sort_keys=True))


@pytest.mark.slow  # the default suite kills generate in tests/test_chaos.py (every stage) and test_train_kills.py
def test_sigkill_mid_generation_then_rerun_gives_identical_rows(tmp_path):
    ref = _start(tmp_path / "ref_cache", tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()[-3000:]
    reference = _outputs(tmp_path / "ref")
    ref_cache = tmp_path / "ref_cache"  # per-stage folders: questions/<key>/rounds, answers/<key>/answers
    n_rounds = len(list(ref_cache.glob("questions/*/rounds/*.json")))
    n_chunks = len(list(ref_cache.glob("answers/*/answers/*.json")))
    assert n_rounds >= 2 and n_chunks >= 4  # enough units to kill in between

    cache = tmp_path / "cache"
    units = lambda sub: len(list(cache.glob(f"{'questions' if sub == 'rounds' else 'answers'}/*/{sub}/*.json")))  # noqa: E731
    # kill 1: during the question rounds; kill 2: during the answer chunks
    _kill_when(_start(cache, tmp_path / "r1"), lambda: units("rounds") >= 1)
    assert units("rounds") < n_rounds or units("answers") < n_chunks
    _kill_when(_start(cache, tmp_path / "r2"), lambda: units("answers") >= 2)
    assert not list(cache.glob("*/manifest.json")), "the run finished before the kill"
    final = _start(cache, tmp_path / "r3")
    assert final.wait(timeout=600) == 0, final.stderr.read().decode()[-3000:]
    assert _outputs(tmp_path / "r3") == reference
    assert not list(cache.glob("*/**/*.tmp"))
