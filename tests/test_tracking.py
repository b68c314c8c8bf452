"""Experiment tracking: one W&B run per job (offline here), finished also on failure; CSV metrics."""
import subprocess

import pytest

from crescent import pipeline
from crescent.config import config_hash
from helpers import ROOT

TINY = ["debug=default", "sampling.num_questions=2", "questions.max_calls=2"]


def test_wandb_offline_run_holds_config_hash_and_commit(make_cfg, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    seen = {}
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.update(kw) or real_init(**kw))
    cfg = make_cfg(*TINY, "logger=wandb", "tags=[t1]")
    pipeline.run(cfg)
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb"))  # `wandb sync` uploads this later
    assert seen["config"]["crescent"]["synth_config_hash"] == config_hash(cfg)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert seen["config"]["crescent"]["git_commit"] == head.stdout.strip()  # this checkout's commit, not a null
    assert seen["config"]["voting"]["k"] == cfg.voting.k  # the full resolved config
    assert seen["tags"] == ["t1"] and seen["job_type"] == "generate" and seen["mode"] == "offline"
    assert wandb.run is None


def test_wandb_run_is_finished_when_a_stage_fails(make_cfg, tmp_path, monkeypatch):
    import wandb

    import crescent.synth.generate as gen

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setattr(gen, "generate_questions", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        pipeline.run(make_cfg(*TINY, "logger=wandb"))
    assert wandb.run is None  # finished, so the next Hydra job starts a fresh run


def test_csv_logger_writes_metrics(make_cfg, tmp_path):
    pipeline.run(make_cfg(*TINY, "logger=csv"))
    text = (tmp_path / "run" / "metrics.csv").read_text()
    assert "generate/raw" in text and "generate/accepted" in text
