"""Reproducibility: same config + seed -> byte-identical data; the manifest records what produced it."""
import hashlib
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import CONF, compose_cfg
from crescent import pipeline
from crescent.models.loading import _hub_kwargs
from crescent.utils.io import read_json, read_jsonl
from crescent.utils.tracking import git_commit

TINY = ["debug=default", "sampling.num_questions=3", "sampling.answer.max_new_tokens=16"]
DATA = ("questions.jsonl", "sft.jsonl", "answers.jsonl", "rejections.jsonl")


def _run(tmp_path: Path, name: str) -> Path:
    pipeline.run(compose_cfg(TINY, tmp_path / name))
    return tmp_path / name / "run" / "synth"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two fresh runs (separate caches) of the same config and seed."""
    tmp = tmp_path_factory.mktemp("repro")
    return _run(tmp, "a"), _run(tmp, "b")


def test_same_config_and_seed_give_identical_files(two_runs):
    a, b = two_runs
    for name in DATA:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # the files hold sampled text (temperature > 0): equal only because every unit is seeded
    # (the random tiny model writes no numbers, so sft.jsonl is empty: answers.jsonl carries the check)
    answers = list(read_jsonl(a / "answers.jsonl"))
    assert answers and any(len(set(r["responses"])) > 1 for r in answers)
    ma, mb = read_json(a / "manifest.json"), read_json(b / "manifest.json")
    assert ma["counts"] == mb["counts"] and ma["config_hash"] == mb["config_hash"]
    assert ma["provenance"]["teacher_weights"] == mb["provenance"]["teacher_weights"]


def test_manifest_records_provenance(two_runs, monkeypatch):
    a, _ = two_runs
    prov = read_json(a / "manifest.json")["provenance"]
    versions = prov["versions"]
    for name in ("crescent", "torch", "transformers", "lm_eval", "numpy", "sentence-transformers"):
        assert versions[name], name
    assert prov["git_commit"] == git_commit()
    weights = prov["teacher_weights"]
    assert weights["name"] == "tiny_llama" and weights["sha256"]
    for name, digest in weights["sha256"].items():
        assert hashlib.sha256((Path(weights["dir"]) / name).read_bytes()).hexdigest() == digest
    config = prov["config"]
    assert config["seed"] == 0 and config["teacher"]["name"] == "tiny_llama"
    assert config["sampling"]["num_questions"] == 3 and "${" not in str(config["paths"])  # resolved

    import crescent.models.embedded as embedded
    from crescent.synth.generate import provenance

    monkeypatch.setattr(embedded, "_sha256", lambda path: pytest.fail(f"{path} hashed again"))
    assert provenance(compose_cfg(TINY, a.parent.parent))["teacher_weights"] == weights  # memoised


def test_trust_remote_code_is_off_in_every_preset():
    for preset in sorted((CONF / "model").glob("*.yaml")):
        assert OmegaConf.load(preset).get("trust_remote_code", False) is False, preset.name


def test_trust_remote_code_opt_in_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="crescent.models.loading"):
        assert _hub_kwargs({"name": "m"}, "/no/such/dir") == {"trust_remote_code": False}
        assert not caplog.records
        assert _hub_kwargs({"name": "exotic", "trust_remote_code": True}, "/no/such/dir")["trust_remote_code"] is True
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "exotic" in caplog.text and "trust_remote_code" in caplog.text
