"""The eval stage end to end on the tiny model: results, samples, summary, resume, before/after,
user-defined benchmarks from a local file, config errors, and the training-time callback."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import open_dict

from crescent.config import ConfigError, validate
from crescent.eval import harness
from crescent.eval import stage as eval_stage
from crescent.utils.io import read_json, read_jsonl

TINY = ["model@teacher=tiny_llama", "logger=none", "stages=[eval]", "eval=smoke", "eval.limit=3",
        "eval.max_gen_toks=8", "eval.dtype=float32"]


def test_eval_stage_writes_results_samples_and_summary(make_cfg):
    cfg = make_cfg(*TINY)
    out = eval_stage.run(cfg)
    run = Path(cfg.paths.output_dir) / "eval"
    result = read_json(run / "results.json")
    assert result["lm_eval_version"] == "0.4.13" and result["settings"]["limit"] == 3
    got = {(r["model"], r["task"], r["num_fewshot"], r["filter"], r["metric"]) for r in result["rows"]}
    assert got == {("base", "gsm8k", 0, "strict-match", "exact_match"), ("base", "gsm8k", 0, "flexible-extract", "exact_match"),
                   ("base", "arc_challenge", 0, "none", "acc"), ("base", "arc_challenge", 0, "none", "acc_norm")}
    assert all(r["n"] == 3 and 0 <= r["value"] <= 1 and r["stderr"] is not None for r in result["rows"])
    samples = list(read_jsonl(run / "samples_base_gsm8k_0shot.jsonl"))
    assert len(samples) == 3 and samples[0]["prompt"].startswith("Question: Janet")
    assert set(samples[0]["filters"]) == {"strict-match", "flexible-extract"}
    assert "exact_match" in samples[0]["filters"]["strict-match"]
    assert (run / "summary.png").stat().st_size > 1000
    assert "| gsm8k | 0 | strict-match | 3 |" in (run / "summary.md").read_text()
    assert set(out.metrics) == {"gsm8k/strict-match", "gsm8k/flexible-extract", "arc_challenge/acc", "arc_challenge/acc_norm"}


def test_finished_units_are_not_scored_again(make_cfg, monkeypatch):
    cfg = make_cfg(*TINY, "eval.tasks=[arc_challenge]")
    first = read_json(Path(eval_stage.run(cfg).artifacts["results"]))

    def boom(*a, **k):
        raise AssertionError("re-evaluated a finished unit")

    monkeypatch.setattr(harness, "evaluate", boom)
    assert read_json(Path(eval_stage.run(cfg).artifacts["results"]))["rows"] == first["rows"]
    with pytest.raises(AssertionError, match="re-evaluated"):  # a changed setting is a new unit
        eval_stage.run(make_cfg(*TINY, "eval.tasks=[arc_challenge]", "eval.limit=2"))


def test_before_and_after_with_an_exported_model(make_cfg):
    from crescent.models.loading import load_model_and_tokenizer

    cfg = make_cfg(*TINY, "eval.tasks=[arc_challenge]", "eval.num_fewshot=[0,1]")
    tok, model = load_model_and_tokenizer(cfg.student, cfg.paths.cache_dir)
    with __import__("torch").no_grad():
        model.model.embed_tokens.weight.mul_(1.5)  # a different model than base
    model.save_pretrained(Path(cfg.paths.output_dir) / "hf_export")
    tok.save_pretrained(Path(cfg.paths.output_dir) / "hf_export")
    out = eval_stage.run(cfg)
    rows = read_json(Path(out.artifacts["results"]))["rows"]
    assert {(r["model"], r["num_fewshot"]) for r in rows} == {(m, k) for m in ("base", "trained") for k in (0, 1)}
    assert "Δ (pts)" in out.record["summary"] and "| arc_challenge | 1 | acc_norm | 3 |" in out.record["summary"]
    assert {"arc_challenge_1shot/acc", "base/arc_challenge_1shot/acc", "delta/arc_challenge_0shot/acc"} <= set(out.metrics)


def test_trained_requested_without_an_export_is_a_config_error(make_cfg):
    with pytest.raises(ConfigError, match="no exported model"):
        eval_stage.run(make_cfg(*TINY, "eval.models=[trained]"))


@pytest.mark.parametrize("override,message", [
    ("eval.num_fewshot=-1", "eval.num_fewshot"),
    ("eval.limit=0", "eval.limit"),
    ("eval.models=[best]", "eval.models"),
    ("eval.tasks=[gsm9k]", "'gsm9k' is not in eval.benchmarks"),
    ("eval.benchmarks.gsm8k.filters=[strict-match,guess]", "['guess'] unknown"),
    ("eval.benchmarks.gsm8k.loader=file", "eval.benchmarks.gsm8k.path=None is invalid"),
    ("eval.benchmarks.gsm8k.kind=essay", "eval.benchmarks.gsm8k.kind='essay'"),
    ("eval.benchmarks.arc_challenge.loader=arc_hard", "loader='arc_hard' is invalid"),
])
def test_bad_eval_config_fails_before_any_model_loads(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(make_cfg(*TINY, override))


ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_user_benchmark_example_runs_end_to_end(tmp_path):
    """examples/user_benchmark: a CSV and a YAML in the user's own config dir, no code."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "crescent", "--config-dir", "examples/user_benchmark/conf", *TINY,
           "+eval/benchmark@eval.benchmarks.unit_conversions=unit_conversions", "eval.tasks=[unit_conversions]",
           f"hydra.run.dir={run_dir}", f"paths.synth_cache={tmp_path}/synth", f"paths.eval_cache={tmp_path}/eval_cache"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_json(run_dir / "eval" / "results.json")["rows"]
    assert {(r["task"], r["filter"], r["n"]) for r in rows} == {("unit_conversions", "flexible-extract", 3),
                                                                ("unit_conversions", "custom-regex", 3)}
    sample = next(read_jsonl(run_dir / "eval" / "samples_base_unit_conversions_0shot.jsonl"))
    assert sample["prompt"] == "Question: How many minutes are there in 3 hours?\nAnswer:" and sample["target"] == "180"
    assert "unit_conversions" in proc.stdout and read_json(run_dir / "status.json")["status"] == "ok"


def test_a_user_benchmark_with_a_missing_file_is_a_config_error(make_cfg, tmp_path):
    spec = {"loader": "file", "path": str(tmp_path / "nope.csv"), "kind": "generate", "question_template": "Q",
            "answer_field": "a"}
    cfg = make_cfg(*TINY)
    with open_dict(cfg):
        cfg.eval.benchmarks["mine"] = spec
    with pytest.raises(ConfigError, match="nope.csv"):
        validate(cfg)


def test_callback_scores_the_live_model_and_restores_train_mode(make_cfg):
    from crescent.eval.callback import eval_callbacks
    from crescent.models.loading import load_model_and_tokenizer

    cfg = make_cfg(*TINY, "eval.callback.every_n_epochs=2", "eval.callback.limit=2",
                   "eval.callback.tasks=[arc_challenge]")
    (callback,) = eval_callbacks(cfg)
    tok, model = load_model_and_tokenizer(cfg.student, cfg.paths.cache_dir)
    model.train()
    logged = []
    module = SimpleNamespace(model=model, tokenizer=tok)
    logger = SimpleNamespace(log_metrics=lambda m, step: logged.append((step, m)))
    for epoch in range(4):
        trainer = SimpleNamespace(current_epoch=epoch, global_step=10 * (epoch + 1), is_global_zero=True,
                                  logger=logger, strategy=SimpleNamespace())
        callback.on_train_epoch_end(trainer, module)
        assert model.training
    assert [step for step, _ in logged] == [20, 40]
    assert set(logged[0][1]) == {"eval_live/arc_challenge/acc", "eval_live/arc_challenge/acc_norm"}
    assert eval_callbacks(make_cfg(*TINY)) == []


def test_each_benchmark_runs_at_its_own_shot_counts(make_cfg):
    cfg = make_cfg("eval=all")
    plan = eval_stage.shot_plan(eval_stage.selected_benchmarks(cfg.eval), cfg.eval.num_fewshot)
    assert set(plan) == {0, 5}
    assert set(plan[5]) == {"gsm8k", "asdiv", "gsm_plus_mini"}  # general benchmarks zero-shot only
    assert {"mmlu", "truthfulqa_mc1", "gsm8k"} <= set(plan[0])
