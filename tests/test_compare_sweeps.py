"""Cross-sweep aggregation (several multirun dirs -> one table, one base row, one plot) and the paired bootstrap
comparison of two runs from their eval/samples_*.jsonl. The files are written in the shapes a run writes
(eval/results.json rows, eval/samples_<model>_<task>_<k>shot.jsonl, .hydra/overrides.yaml, status.json)."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers import ROOT
from crescent.aggregate import combined_table, load_sources, parse_source
from crescent.compare import compare, paired_bootstrap


def _row(model, value, task="gsm8k", shots=0, filt="flexible-extract"):
    return {"model": model, "task": task, "num_fewshot": shots, "filter": filt, "metric": "exact_match",
            "value": value, "stderr": 0.01, "n": 20, "task_version": 3.0}


def _fake_job(job_dir: Path, overrides: list[str], trained: float, base: float = 0.2, student="smollm2_135m_instruct"):
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job_dir / ".hydra" / "config.yaml").write_text(f"student:\n  name: {student}\n")
    (job_dir / "status.json").write_text(json.dumps({"status": "ok", "stages": ["generate", "train", "eval"]}))
    (job_dir / "eval").mkdir()
    rows = [_row("base", base), _row("base", base - 0.05, filt="strict-match"), _row("trained", trained),
            _row("trained", trained - 0.05, filt="strict-match")]
    (job_dir / "eval" / "results.json").write_text(json.dumps({"lm_eval_version": "0.4.13", "rows": rows}))
    (job_dir / "synth").mkdir()
    (job_dir / "synth" / "manifest.json").write_text(json.dumps({"counts": {"accepted": 40, "kept": 30}}))


def _fake_sweep(root: Path, key: str, values: list, scores: list[float]) -> Path:
    for i, (v, s) in enumerate(zip(values, scores)):
        _fake_job(root / f"{i}_{abs(hash((key, v))) % 10**8:08x}", [f"{key}={v}", "experiment=smoke"], s)
    return root


def test_two_sweeps_make_one_table_with_both_sources_and_one_base_row(tmp_path):
    a = _fake_sweep(tmp_path / "sweepA", "voting.k", [1, 3, 5], [0.3, 0.35, 0.4])
    b = _fake_sweep(tmp_path / "sweepB", "dedup.threshold", [0.8, 0.9], [0.25, 0.45])
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "experiments/aggregate.py", f"main={a}", f"ablation={b}", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(out / "aggregate.csv")
    base = df[df["configuration"].str.startswith("base: ")]
    assert len(base) == 1 and base["source"].iloc[0] == "main, ablation" and base["runs"].iloc[0] == 5
    assert base["gsm8k 0-shot"].iloc[0] == pytest.approx(0.2)
    body = df[~df["configuration"].str.startswith("base: ")]
    assert list(body["source"]) == ["main"] * 3 + ["ablation"] * 2
    assert set(body["configuration"]) == {"voting.k=1", "voting.k=3", "voting.k=5", "dedup.threshold=0.8",
                                          "dedup.threshold=0.9"}
    assert body.set_index("configuration").loc["dedup.threshold=0.9", "gsm8k 0-shot"] == pytest.approx(0.45)
    unlabelled = subprocess.run([sys.executable, "experiments/aggregate.py", str(a), str(b), "--out",
                                 str(tmp_path / "cmp2")], capture_output=True, text=True, cwd=ROOT)
    assert unlabelled.returncode == 0, unlabelled.stderr[-3000:]
    df2 = pd.read_csv(tmp_path / "cmp2" / "aggregate.csv")
    assert list(df2["source"]) == ["sweepA, sweepB"] + ["sweepA"] * 3 + ["sweepB"] * 2
    md = (out / "aggregate.md").read_text()
    assert "| main, ablation" in md and "voting.k=5" in md and "45.0" in md
    assert (out / "aggregate.png").stat().st_size > 0  # one line per source against its swept value


def test_base_rows_that_differ_stay_apart_and_labels_must_be_unique(tmp_path):
    a = _fake_sweep(tmp_path / "a", "voting.k", [1, 3], [0.3, 0.35])
    b = tmp_path / "b"
    for i, v in enumerate([1, 3]):
        _fake_job(b / f"{i}_x", [f"voting.k={v}"], 0.5, base=0.1)  # another eval setting: another base score
    df, failed = combined_table(load_sources([str(a), str(b)]))
    assert list(df[df["configuration"].str.startswith("base: ")]["source"]) == ["a", "b"] and not failed
    with pytest.raises(ValueError, match="share the label"):
        load_sources([f"x={a}", f"x={b}"])
    assert parse_source("wandb:ent/proj/smoke/2026-01-01") == ("2026-01-01", "wandb:ent/proj/smoke/2026-01-01")
    assert parse_source("main=multirun/2026/x") == ("main", "multirun/2026/x")


def _samples(run: Path, values: list[float], task="gsm8k", shots=0, model="trained", offset=0):
    d = run / "eval"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"samples_{model}_{task}_{shots}shot.jsonl", "w") as f:
        for i, v in enumerate(values):
            f.write(json.dumps({"model": model, "task": task, "num_fewshot": shots, "doc_id": i + offset,
                                "target": "12", "prompt": "Question: ...\nAnswer:", "response": " #### 12",
                                "filters": {"strict-match": {"extracted": "12", "exact_match": v, "math_equal": v},
                                            "flexible-extract": {"extracted": "12", "exact_match": v,
                                                                 "math_equal": v}}}) + "\n")


def test_paired_bootstrap_ci_excludes_zero_for_a_real_gain_and_includes_it_for_noise(tmp_path):
    n = 100
    a = [float(i % 5 == 0) for i in range(n)]                     # 20%
    better = [1.0 if i % 5 == 0 or i % 2 == 0 else 0.0 for i in range(n)]  # 60%: a strict improvement
    noisy = list(a)
    for i in (1, 2, 3):  # three docs gained, two lost: no real difference
        noisy[i] = 1.0
    noisy[0], noisy[5] = 0.0, 0.0
    _samples(tmp_path / "A", a)
    _samples(tmp_path / "B", better)
    _samples(tmp_path / "C", noisy)
    gain = {d.score: d for d in compare(tmp_path / "A", tmp_path / "B", n_boot=2000, seed=0)}
    g = gain["flexible-extract"]
    assert g.n == n and g.diff == pytest.approx(0.4) and g.lo > 0 and g.excludes_zero
    assert set(gain) == {"strict-match", "strict-match/math_equal", "flexible-extract", "flexible-extract/math_equal"}
    same = {d.score: d for d in compare(tmp_path / "A", tmp_path / "C", n_boot=2000, seed=0)}["flexible-extract"]
    assert same.diff == pytest.approx(0.01) and same.lo < 0 < same.hi and not same.excludes_zero
    # seeded: the same call gives the same interval; n_boot changes it
    assert paired_bootstrap(a, noisy, 500, seed=3) == paired_bootstrap(a, noisy, 500, seed=3)


def test_compare_pairs_only_shared_documents_and_the_cli_prints_the_ci(tmp_path):
    _samples(tmp_path / "A", [0.0] * 30, task="asdiv", shots=5, model="base")
    _samples(tmp_path / "B", [1.0] * 40, task="asdiv", shots=5, offset=10)  # docs 10..49: 20 shared with A
    d = {x.score: x for x in compare(tmp_path / "A", tmp_path / "B", n_boot=200)}["strict-match"]
    assert (d.task, d.shots, d.n, d.a, d.b) == ("asdiv", 5, 20, 0.0, 1.0)
    out = subprocess.run([sys.executable, "experiments/compare.py", str(tmp_path / "A"), str(tmp_path / "B"),
                          "--n-boot", "300", "--seed", "1"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| asdiv | 5 | strict-match | 20 | 0.0 | 100.0 | +100.0 | [+100.0, +100.0] | yes |" in out.stdout
    with pytest.raises(FileNotFoundError, match="log_samples"):
        compare(tmp_path / "A", tmp_path / "nothing")
