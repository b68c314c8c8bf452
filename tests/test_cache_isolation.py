"""Tests keep every cache in pytest's tmp dir (conftest's session `cache_dir`): a pipeline run with the default
paths writes its synth data, model folders and kernels there, never under $HOME/.cache/crescent."""
import os
from pathlib import Path

from crescent import pipeline
from helpers import compose_cfg


def test_a_default_paths_run_writes_only_into_the_session_cache(cache_dir, tmp_path, monkeypatch):
    home = tmp_path / "home"  # were CRESCENT_CACHE unset, paths.cache_dir would be <this>/.cache/crescent
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert Path(os.environ["CRESCENT_CACHE"]) == cache_dir and cache_dir.is_relative_to(tmp_path.parents[1])
    cfg = compose_cfg(["debug=default", "sampling.num_questions=2", "questions.max_calls=2",
                       f"paths.output_dir={tmp_path / 'run'}"])  # paths.cache_dir and paths.synth_cache: defaults
    assert Path(cfg.paths.cache_dir) == cache_dir and Path(cfg.paths.synth_cache) == cache_dir / "synth"
    pipeline.run(cfg)
    assert list((cache_dir / "synth").glob("*/sft.jsonl"))  # the generation cache went to the session cache
    assert not (home / ".cache").exists()
