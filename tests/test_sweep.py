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

from helpers import CONF, ROOT
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
                      "train.optimizer.lr=1e-4,1e-3", f"hydra.sweep.dir={sweep}", f"paths.synth_cache={tmp_path}/c"],
                     cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = subprocess.run([sys.executable, "experiments/aggregate.py", str(sweep)], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout.split("\n\n")[0].splitlines()
    body = [line for line in table[2:] if not line.startswith("| base:")]
    assert len(body) == 4 and "train.epochs=1 train.optimizer.lr=0.0001" in body[0]
    assert "arc_challenge 0-shot (%)" in table[0] and (sweep / "aggregate.csv").is_file()
    # two real jobs' eval/samples_*.jsonl, paired: one row per score, with its CI
    jobs = load_multirun(sweep)
    cmp = subprocess.run([sys.executable, "experiments/compare.py", jobs[0].dir, jobs[3].dir, "--n-boot", "200"],
                         capture_output=True, text=True, cwd=ROOT)
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    assert "| arc_challenge | 0 | acc | 2 |" in cmp.stdout and "| arc_challenge | 0 | acc_norm | 2 |" in cmp.stdout
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
    one_shot_count = "eval.num_fewshot=[0]"
    assert objective(make_cfg("optimized_metric=eval/gsm8k/flexible-extract", one_shot_count), results) == 0.25
    assert objective(make_cfg(), results) is None
    with pytest.raises(ConfigError, match="available: \\['eval/gsm8k/flexible-extract'\\]"):
        objective(make_cfg("optimized_metric=eval/gsm8k/strict-match", one_shot_count), results)


def test_optuna_voting_metric_resolves_for_any_shot_list_or_fails_before_the_trial(make_cfg):
    """The default eval scores 0 and 5 shots, so metrics are named gsm8k_0shot/...: the preset's metric used to be
    'eval/gsm8k/flexible-extract', which no run produces (the trial ran, then failed)."""
    from crescent.config import ConfigError
    from crescent.eval.report import metric_dict
    from crescent.pipeline import check_objective, objective

    cfg = compose_with_hydra(["hparams_search=optuna_voting", "eval.tasks=[gsm8k,asdiv]"])
    assert list(cfg.eval.num_fewshot) == [0, 5]
    rows = [{"model": m, "task": t, "num_fewshot": k, "filter": "flexible-extract", "metric": "exact_match",
             "value": v + k / 100} for m, v in (("base", 0.1), ("trained", 0.3)) for t in ("gsm8k", "asdiv")
            for k in (0, 5)]
    assert objective(cfg, {"eval": {"metrics": metric_dict(rows)}}) == pytest.approx(0.3)  # trained, 0-shot
    one = make_cfg("optimized_metric=eval/gsm8k_0shot/flexible-extract", "eval.num_fewshot=[0]")
    assert check_objective(one) == "eval/gsm8k/flexible-extract"
    single = [r for r in rows if r["num_fewshot"] == 0]
    assert objective(one, {"eval": {"metrics": metric_dict(single)}}) == pytest.approx(0.3)
    assert check_objective(make_cfg("optimized_metric=eval/delta/gsm8k_5shot/flexible-extract")) == \
        "eval/delta/gsm8k_5shot/flexible-extract"
    # names that cannot match fail at validate time, naming the choices
    with pytest.raises(ConfigError, match=r"gsm8k is scored at \[0, 5\] shots, so its metrics are named "
                                          r"\['gsm8k_0shot/flexible-extract', 'gsm8k_5shot/flexible-extract'\]"):
        check_objective(make_cfg("optimized_metric=eval/gsm8k/flexible-extract"))
    with pytest.raises(ConfigError, match="no benchmark 'mmlu'"):
        check_objective(make_cfg("optimized_metric=eval/mmlu/acc"))
    with pytest.raises(ConfigError, match=r"scored at \[0\] shots.*\['gsm8k/flexible-extract'\]"):
        check_objective(make_cfg("optimized_metric=eval/gsm8k_5shot/flexible-extract", "eval.num_fewshot=[0]"))
    assert check_objective(make_cfg("optimized_metric=train/loss")) == "train/loss"


LONG_OVERRIDES = ["sampling.question.temperature=0.95", "sampling.question.top_p=0.975", "sampling.answer.temperature=0.85",
                  "sampling.answer.top_p=0.925", "sampling.question.max_new_tokens=123", "dedup.threshold=0.8125",
                  "train.optimizer.weight_decay=0.0123", "train.optimizer.lr=0.000012345", "train.epochs=3", "train.max_seq_len=1536",
                  "questions.calls_per_round=17", "questions.max_calls=1234", "sampling.num_questions=4321",
                  "eval.limit=77", "eval.max_gen_toks=321", "seed=12345"]


def test_a_job_with_many_long_overrides_gets_a_short_stable_subdir_and_aggregate_finds_it(tmp_path):
    """The default subdir used to be <num>_<all overrides>: 'File name too long' past ~14 overrides. Hydra's own
    launcher builds the job dir here (a task that only records where it ran)."""
    assert len(",".join(LONG_OVERRIDES)) > 255
    script = tmp_path / "task.py"
    script.write_text(
        "import sys, hydra, crescent\n"
        "from hydra.core.hydra_config import HydraConfig\n"
        f"@hydra.main(version_base='1.3', config_path={str(CONF)!r}, config_name='config')\n"
        "def task(cfg):\n"
        "    print('JOBDIR', HydraConfig.get().runtime.output_dir)\n"
        "task()\n")
    sweep = tmp_path / "sweep"
    run = lambda: subprocess.run([sys.executable, str(script), "-m", *LONG_OVERRIDES, "voting.k=7,8",
                                  f"hydra.sweep.dir={sweep}"], capture_output=True, text=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc = run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = [Path(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("JOBDIR ")]
    assert [d.name.split("_")[0] for d in dirs] == ["0", "1"] and all(len(d.name.encode()) < 32 for d in dirs)
    assert len({d.name for d in dirs}) == 2
    import yaml

    assert "train.optimizer.weight_decay=0.0123" in yaml.safe_load((dirs[0] / ".hydra" / "overrides.yaml").read_text())
    again = run()  # stable: the same overrides give the same folder names
    assert [line for line in again.stdout.splitlines() if line.startswith("JOBDIR ")] == \
        [line for line in proc.stdout.splitlines() if line.startswith("JOBDIR ")]
    for d in dirs:  # a finished job, so aggregation labels it from .hydra/overrides.yaml, not the folder name
        (d / "status.json").write_text(json.dumps({"status": "ok"}))
    jobs = load_multirun(sweep)
    assert [j.params["voting.k"] for j in jobs] == ["7", "8"] and jobs[0].params["eval.limit"] == "77"
    assert [r["label"] for r in build_table(jobs)["rows"]] == ["voting.k=7", "voting.k=8"]
