"""Adding a backend or a verifier takes only a YAML whose `_target_` names it (Hydra's instantiate builds it):
tests/plugin_conf/{backend/marked_hf,verify/first_sample}.yaml point into tests/plugin_example.py, a module crescent
knows nothing of, and the pipeline runs the gap stage with both on the tiny model."""
import json

import pytest

import plugin_example
from helpers import ROOT
from crescent import pipeline
from crescent.config import ConfigError

T, F = True, False
PLUGINS = [f"hydra.searchpath=[file://{ROOT}/tests/plugin_conf]", "backend=marked_hf", "verify=first_sample"]
RUN = ["model@teacher=tiny_llama", "stages=[gap]", "logger=none", "gap.limit=2", "gap.n_samples=4",
       "gap.max_new_tokens=4", "gap.cache=false", "gap.pass_k=[1,2,4]"]


def test_a_new_backend_and_verifier_from_yaml_run_through_the_pipeline(make_cfg, tmp_path):
    plugin_example.BUILT.clear()
    result = pipeline.run(make_cfg(*PLUGINS, *RUN))["gap"]
    assert plugin_example.BUILT == [{"backend": {"name": "marked_hf", "batch_size": 8, "dtype": "float32",
                                                 "device": "cpu", "sort_by_length": True, "data_parallel_size": 1,
                                                 "shard": None},
                                     "model": "tiny_llama", "seed": 0}]
    rows = [json.loads(x) for x in (tmp_path / "run" / "gap" / "samples.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in rows] == ["18", "3"]
    assert rows[0]["extracted"] == ["18", "5", "5", "5"] and rows[1]["extracted"] == ["3"] * 4
    assert all(r["kept"] == [T, F, F, F] and r["scores"] == [1.0, 0.0, 0.0, 0.0] for r in rows)
    m = result.metrics
    assert m["acc_all"] == 0.625 and m["acc_filtered"] == 1.0 and m["gap"] == 0.375 and m["kept_fraction"] == 0.25
    saved = json.loads((tmp_path / "run" / "gap" / "results.json").read_text())
    assert saved["verifier"] == {"name": "first_sample", "filter": "threshold 0.5"}
    assert saved["verify_counts"]["verifier"] == "first_sample" and saved["verify_counts"]["kept"] == 2


def test_the_plugin_verifier_gets_its_own_settings(make_cfg):
    result = pipeline.run(make_cfg(*PLUGINS, *RUN, "verify.bonus=0.5", "verify.threshold=0.6"))["gap"]
    assert result.metrics["kept_fraction"] == 0.25  # 1.0 / 0.5 against a threshold of 0.6
    result = pipeline.run(make_cfg(*PLUGINS, *RUN, "verify.bonus=0.5", "verify.threshold=0.5"))["gap"]
    assert result.metrics["kept_fraction"] == 1.0


def test_the_built_in_names_are_still_checked(make_cfg):
    with pytest.raises(ConfigError, match=r"backend.name='tgi' is invalid: expected one of \['hf', 'vllm', 'fast'\]"):
        pipeline.run(make_cfg(*RUN, "backend.name=tgi"))
