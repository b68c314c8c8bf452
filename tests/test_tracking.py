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


def _capture_wandb_keys(monkeypatch) -> list[set]:
    """Every key logged to the W&B run (by crescent's tracker and by Lightning's WandbLogger), per run."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs: list[set] = []
    real_init = wandb.init

    def init(**kw):
        run = real_init(**kw)
        keys: set = set()
        runs.append(keys)
        real_log = run.log
        run.log = lambda data, *a, **k: keys.update(data) or real_log(data, *a, **k)
        return run

    monkeypatch.setattr(wandb, "init", init)
    return runs


def _sft(path):
    import json

    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                                                      {"role": "assistant", "content": f"#### {i + 1}"}]}) + "\n"
                            for i in range(8)))
    return path


def test_wandb_metric_keys_are_not_doubled(make_cfg, tmp_path, monkeypatch):
    """The stage summary used to be logged as '<stage>/' + keys Lightning had already namespaced: train/train/loss."""
    runs = _capture_wandb_keys(monkeypatch)
    cfg = make_cfg("debug=default", "logger=wandb", "stages=[train]", f"train.data={_sft(tmp_path / 'sft.jsonl')}",
                   "train.epochs=1", "train.max_seq_len=128", "train.val_fraction=0.25")
    pipeline.run(cfg)
    (keys,) = runs
    assert {"train/loss", "train/ce", "val/loss", "train_wall_s"} <= keys
    assert not [k for k in keys if k.startswith(("train/train/", "train/val/"))], sorted(keys)
    assert pipeline.tracker_keys("eval", {"gsm8k/flexible-extract": 0.5}) == {"eval/gsm8k/flexible-extract": 0.5}
    assert pipeline.tracker_keys("generate", {"accepted": 3}) == {"generate/accepted": 3.0}
    assert pipeline.tracker_keys("gap", {"gap": 0.1, "pass@1": 0.5}) == {"gap/gap": 0.1, "gap/pass@1": 0.5}
