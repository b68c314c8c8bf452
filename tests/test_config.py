"""Every option of every group composes; bad values fail fast with the key and allowed values."""
import subprocess
import sys
import time

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf

from helpers import CONF, ROOT, compose_cfg
from crescent.config import ConfigError, config_hash, validate

GROUPS = {"model@teacher": "model", "model@student": "model", "backend": "backend", "questions": "questions",
          "sampling": "sampling", "dedup": "dedup", "voting": "voting", "train": "train", "trainer": "trainer",
          "logger": "logger"}
OPTIONAL_GROUPS = ("experiment", "debug")


def options(group_dir):
    return sorted(p.stem for p in (CONF / group_dir).glob("*.yaml"))


CASES = [f"{g}={o}" for g, d in GROUPS.items() for o in options(d)] + \
        [f"{g}={o}" for g in OPTIONAL_GROUPS for o in options(g)]


def test_every_group_has_options():
    for d in set(GROUPS.values()) | set(OPTIONAL_GROUPS):
        assert options(d), d


@pytest.mark.parametrize("override", CASES)
def test_every_option_composes_and_validates(override, tmp_path):
    cfg = compose_cfg([override, "stages=[generate,train]"], tmp_path)
    validate(cfg)
    group, option = override.split("=")
    if group.startswith("model@"):
        assert cfg[group.split("@")[1]].name == option
    elif group in GROUPS:
        assert cfg[group].name == option


def test_student_follows_teacher_unless_given(tmp_path):
    cfg = compose_cfg(["model@teacher=tiny_llama"], tmp_path)
    assert cfg.teacher.name == cfg.student.name == "tiny_llama"
    cfg = compose_cfg(["model@student=tiny_llama"], tmp_path)
    assert (cfg.teacher.name, cfg.student.name) == ("smollm2_135m_instruct", "tiny_llama")


@pytest.mark.parametrize("override,key,allowed", [
    ("voting.k=0", "voting.k", "integer >= 1"),
    ("voting.k=-3", "voting.k", "integer >= 1"),
    ("voting.k=2.5", "voting.k", "integer >= 1"),
    ("dedup.threshold=1.5", "dedup.threshold", "[0.0, 1.0]"),
    ("dedup.threshold=-0.1", "dedup.threshold", "[0.0, 1.0]"),
    ("dedup.max_attempts=-1", "dedup.max_attempts", "integer >= 0"),
    ("dedup.index=annoy", "dedup.index", "'exact', 'faiss', 'hnsw', 'auto'"),
    ("voting.tie=coin", "voting.tie", "'first', 'random', 'drop'"),
    ("voting.min_agreement=2", "voting.min_agreement", "[0.0, 1.0]"),
    ("sampling.question.temperature=-1", "sampling.question.temperature", ">= 0.0"),
    ("sampling.answer.top_p=0", "sampling.answer.top_p", "(0, 1]"),
    ("sampling.question.n=0", "sampling.question.n", "integer >= 1"),
    ("sampling.num_questions=0", "sampling.num_questions", "null or an integer >= 1"),
    ("teacher.source=ftp", "teacher.source", "'embedded', 'tiny', 'hub'"),
    ("backend.name=tgi", "backend.name", "'hf', 'vllm'"),
    ("stages=[generate,fly]", "stages", "generate"),
    ("questions.answer_prompt=no_placeholder", "questions.answer_prompt", "{question}"),
    ("seed=-1", "seed", "integer in [0, 4294967295]"),
    ("seed=99999999999999999999", "seed", "integer in [0, 4294967295]"),  # issue 21: accepted before
    ("seed=4294967296", "seed", "integer in [0, 4294967295]"),  # issue 21: failed late in Lightning
    ("sampling.question.temperature=inf", "sampling.question.temperature", ">= 0.0"),  # issue 21
    ("sampling.answer.top_p=nan", "sampling.answer.top_p", "(0, 1]"),
    ("train.optimizer.lr=inf", "train.optimizer.lr", "> 0"),
    ("train.optimizer.lr=0", "train.optimizer.lr", "> 0"),
    ("train.kd.alpha=1.5", "train.kd.alpha", "[0.0, 1.0]"),
    ("train.val_fraction=1", "train.val_fraction", "[0, 1)"),
    ("train.scheduler.name=step", "train.scheduler.name", "'cosine', 'linear', 'constant'"),
    ("trainer.precision=8-bit", "trainer.precision", "bf16-mixed"),
    ("trainer.devices=0", "trainer.devices", "integer >= 1, -1 or 'auto'"),
    ("train.data=/nonexistent/sft.jsonl", "train.data", "no such file"),
    ("train.global_batch_size=6", "train.global_batch_size", "multiple of trainer.devices x trainer.num_nodes = 4"),
    ("trainer.accelerator=cpu", "trainer.strategy", "needs CUDA GPUs"),
    ("train.micro_batch_size=2", "train.micro_batch_size", "divisor of the 3 sequences per process"),  # issue 21
])
def test_bad_value_names_key_and_allowed(override, key, allowed, tmp_path):
    extra = {"train.global_batch_size=6": ["trainer.devices=4"],
             "train.micro_batch_size=2": ["train.global_batch_size=3", "trainer=cpu"],
             "trainer.accelerator=cpu": ["trainer=deepspeed_stage_2"]}.get(override, [])
    cfg = compose_cfg([*extra, "stages=[generate,train]", override], tmp_path)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert key in msg and allowed in msg


def test_all_errors_reported_at_once(tmp_path):
    cfg = compose_cfg(["voting.k=0", "dedup.threshold=2"], tmp_path)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "voting.k" in str(e.value) and "dedup.threshold" in str(e.value)


def test_unknown_model_is_a_hydra_error_listing_options(tmp_path):
    with pytest.raises(HydraException) as e:
        compose_cfg(["model@teacher=gpt5"], tmp_path)
    assert "smollm2_135m_instruct" in str(e.value) and "tiny_llama" in str(e.value)


def test_hash_ignores_non_data_keys(tmp_path):
    a = compose_cfg([], tmp_path)
    b = compose_cfg(["logger=csv", "stages=[generate]", "backend.device=cuda"], tmp_path / "other")
    c = compose_cfg(["voting.k=5"], tmp_path)
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(c)


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "crescent", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_cli_help_lists_groups():
    out = _cli("--help")
    assert out.returncode == 0, out.stderr
    for group in ("dedup", "voting", "sampling", "questions", "backend", "model@teacher"):
        assert group in out.stdout or group.split("@")[0] in out.stdout


def test_cli_cfg_job_prints_config():
    out = _cli("--cfg", "job")
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.voting.k == 3 and cfg.teacher.name == "smollm2_135m_instruct"


def test_cli_bad_value_fails_fast_before_model_load(tmp_path):
    t0 = time.perf_counter()
    out = _cli("voting.k=0", "dedup.threshold=1.5", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0
    assert "voting.k=0" in out.stderr and "dedup.threshold=1.5" in out.stderr
    assert time.perf_counter() - t0 < 30  # python + hydra start-up; no model is loaded
    assert not (tmp_path / "synth").exists()
