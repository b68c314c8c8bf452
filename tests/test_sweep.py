"""Sweeps: every preset composes and validates, a real 2x2 multirun aggregates into a 4-row table,
seeds average, failed jobs are listed and re-run, W&B grouping and the Optuna objective."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF, ROOT
from crescent.aggregate import (Job, build_table, load_multirun, numeric_keys, rerun_command,
                                rows_from_wandb_summary, to_markdown)
from crescent.config import validate

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))


def compose_with_hydra(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_experiment_preset_composes_validates_and_documents_itself(preset):
    cfg = compose_with_hydra([f"experiment={preset}"])
    validate(cfg)
    header = (CONF / "experiment" / f"{preset}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_" and f"experiment={preset}" in "\n".join(
        line for line in header if line.startswith("#"))


def test_paper_presets_hold_the_papers_settings():
    main = compose_with_hydra(["experiment=crescent_llama3_8b"])
    assert main.teacher.name == main.student.name == "llama3_8b_instruct"
    assert (main.questions.max_calls, main.sampling.question.n, main.sampling.question.temperature) == (550, 100, 1.0)
    assert (main.dedup.name, main.dedup.threshold, main.voting.k, main.backend.name) == ("embedding", 0.85, 3, "vllm")
    assert list(main.stages) == ["generate", "train", "eval"] and main.eval.name == "all"
    assert compose_with_hydra(["experiment=crescent_llama3_8b_no_dedup"]).dedup.name == "none"
    no_vote = compose_with_hydra(["experiment=crescent_llama3_8b_no_voting"])
    assert (no_vote.voting.name, no_vote.voting.k) == ("single", 1)
    distil = compose_with_hydra(["experiment=crescent_distill_llama3_8b_to_1b"])
    assert (distil.teacher.name, distil.student.name) == ("llama3_8b_instruct", "llama3_2_1b_instruct")
    llama2 = compose_with_hydra(["experiment=crescent_llama2_7b"])
    assert llama2.teacher.name == "llama2_7b_chat" and "create one unique math word problem" in llama2.questions.prompt


@pytest.mark.parametrize("search", SEARCHES)
def test_every_hparams_search_composes_as_a_multirun(search):
    cfg = compose_with_hydra(["experiment=smoke", f"hparams_search={search}"])
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.hydra.sweeper.params


def test_launchers_compose():
    slurm = compose_with_hydra(["hydra/launcher=slurm_8gpu"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.gpus_per_node == slurm.tasks_per_node == 8
    assert compose_with_hydra(["hydra/launcher=local_cpu"]).hydra.launcher.n_jobs == 2
    assert compose_with_hydra(["hydra/launcher=joblib"]).hydra.launcher._target_.endswith("JoblibLauncher")


def _sft(path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i + 1}?"},
                          {"role": "assistant", "content": f"{i} + {i + 1} = {2 * i + 1}.\n#### {2 * i + 1}"}]}
            for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _crescent(args, cwd, **kw):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "crescent", *args], capture_output=True, text=True, cwd=cwd, env=env, **kw)


TINY_JOB = ["experiment=smoke", "debug=default", "stages=[train,eval]", "eval.tasks=[arc_challenge]",
            "eval.limit=2", "eval.dtype=float32", "train.max_seq_len=64"]


def test_a_2x2_multirun_aggregates_into_a_4_row_table_and_failed_jobs_rerun(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _crescent(["-m", *TINY_JOB, f"train.data={_sft(tmp_path / 'sft.jsonl')}", "train.epochs=1,2",
                      "train.optimizer.lr=1e-4,1e-3", f"hydra.sweep.dir={sweep}", f"paths.synth_cache={tmp_path}/c", f"paths.eval_cache={tmp_path}/e"],
                     cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = subprocess.run([sys.executable, "experiments/aggregate.py", str(sweep)], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout.split("\n\n")[0].splitlines()
    body = [line for line in table[2:] if not line.startswith("| base:")]
    assert len(body) == 4 and "train.epochs=1 train.optimizer.lr=0.0001" in body[0]
    assert "arc_challenge 0-shot (%)" in table[0] and (sweep / "aggregate.csv").is_file()
    # a job that died: listed, and rerun_failed relaunches exactly it, in its own dir
    jobs = load_multirun(sweep)
    victim = Path(jobs[2].dir)
    (victim / "status.json").write_text(json.dumps({"status": "running"}))
    dry = subprocess.run([sys.executable, "experiments/rerun_failed.py", str(sweep), "--dry-run"],
                         capture_output=True, text=True, cwd=ROOT)
    assert dry.stdout.count("$ crescent") == 1 and str(victim) in dry.stdout
    assert "stopped while running" in subprocess.run([sys.executable, "experiments/aggregate.py", str(sweep)],
                                                     capture_output=True, text=True, cwd=ROOT).stdout
    cmd = rerun_command(jobs[2])
    rerun = _crescent(cmd[1:], cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads((victim / "status.json").read_text())["status"] == "ok"
    assert all(j.status == "ok" for j in load_multirun(sweep))


def _job(tmp, name, overrides, value, status="ok", error=None, base=0.2):
    rows = [{"model": "trained", "task": "gsm8k", "num_fewshot": 0, "filter": f, "metric": "exact_match",
             "value": value + (0.1 if f == "flexible-extract" else 0), "stderr": 0.01, "n": 10}
            for f in ("strict-match", "flexible-extract")]
    rows.append({"model": "base", "task": "gsm8k", "num_fewshot": 0, "filter": "flexible-extract",
                 "metric": "exact_match", "value": base, "stderr": 0.01, "n": 10})
    return Job(str(tmp / name), overrides, status, error, rows if status == "ok" else [], {"accepted": 10, "kept": 8},
               "smollm2_135m_instruct")


def test_seeds_average_into_mean_and_std_and_failures_are_listed(tmp_path):
    jobs = [_job(tmp_path, "0", ["voting.k=1", "seed=0"], 0.1), _job(tmp_path, "1", ["voting.k=1", "seed=1"], 0.3),
            _job(tmp_path, "2", ["voting.k=3", "seed=0"], 0.4),
            _job(tmp_path, "3", ["voting.k=3", "seed=1"], 0, status="failed", error="RuntimeError: OOM")]
    table = build_table(jobs)
    rows = {r["label"]: r for r in table["rows"]}
    assert set(rows) == {"base: smollm2_135m_instruct", "voting.k=1", "voting.k=3"}
    mean, std = rows["voting.k=1"]["cells"]["gsm8k 0-shot"]
    assert (round(mean, 6), round(std, 6)) == (0.3, round(0.1414213562, 6))  # flexible-extract: 0.2 and 0.4
    assert rows["voting.k=3"]["n"] == 1 and rows["voting.k=3"]["cells"]["gsm8k 0-shot"][1] is None
    md = to_markdown(table)
    assert "| voting.k=1 | 2 | 10 | 8 | 30.0 ± 14.1 |" in md and "RuntimeError: OOM" in md
    strict = {r["label"]: r for r in build_table(jobs, score="strict-match")["rows"]}
    assert strict["voting.k=1"]["cells"]["gsm8k 0-shot"][0] == pytest.approx(0.2)
    assert numeric_keys(jobs, table["keys"]) == ["voting.k"]
    assert rerun_command(jobs[3])[-2:] == ["hydra.mode=RUN", f"hydra.run.dir='{tmp_path / '3'}'"]


def test_rows_from_wandb_summary_keys():
    rows = rows_from_wandb_summary({"eval/gsm8k_5shot/strict-match": 0.5, "eval/base/arc_challenge/acc": 0.25,
                                    "eval/delta/gsm8k_5shot/strict-match": 0.1, "train/loss": 1.0}, default_shots=0)
    got = {(r["model"], r["task"], r["num_fewshot"], r["filter"], r["metric"], r["value"]) for r in rows}
    assert got == {("trained", "gsm8k", 5, "strict-match", "exact_match", 0.5),
                   ("base", "arc_challenge", 0, "none", "acc", 0.25)}


def test_wandb_runs_are_grouped_by_experiment_and_sweep(monkeypatch):
    from crescent.utils import tracking

    assert tracking.wandb_group({}) is None
    assert tracking.wandb_group({"experiment": "smoke"}) == "smoke"
    assert tracking.wandb_group({"experiment": None, "sweep": "2026-11-22-10-00-00"}) == "crescent/2026-11-22-10-00-00"


def test_optuna_objective_is_the_named_metric(make_cfg):
    from crescent.config import ConfigError
    from crescent.pipeline import objective

    results = {"eval": {"metrics": {"gsm8k/flexible-extract": 0.25}}}
    assert objective(make_cfg("optimized_metric=eval/gsm8k/flexible-extract"), results) == 0.25
    assert objective(make_cfg(), results) is None
    with pytest.raises(ConfigError, match="available: \\['eval/gsm8k/flexible-extract'\\]"):
        objective(make_cfg("optimized_metric=eval/gsm8k/strict-match"), results)
