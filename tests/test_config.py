"""Every option of every group composes; bad values fail fast, all at once, each line naming the key, the value and
what is allowed (named cases; the walk over every leaf of every option: test_config_walk.py)."""
import copy
import os
import subprocess
import sys
import time

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict

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


ALL_STAGES = "stages=[generate,train,eval,gap]"  # every stage, so every stage's checks run


def _is_group(override):
    key = override.split("=")[0].lstrip("+~")
    return "@" in key or (CONF / key).is_dir()


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    """make(*overrides): the config composed once per set of group choices, value overrides applied to a copy."""
    out, cache, parser = tmp_path_factory.mktemp("schema"), {}, OverridesParser.create()

    def make(*overrides):
        groups = tuple(o for o in overrides if _is_group(o))
        if groups not in cache:
            cache[groups] = compose_cfg([ALL_STAGES, *groups], out)
        cfg = copy.deepcopy(cache[groups])
        for o in parser.parse_overrides([o for o in overrides if not _is_group(o)]):
            with open_dict(cfg):
                if o.is_delete():
                    parent, _, leaf = o.key_or_group.rpartition(".")
                    del OmegaConf.select(cfg, parent)[leaf]
                else:
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=False)
        return cfg

    return make


@pytest.mark.parametrize("overrides,line", [
    # the examples
    (["voting.k=-1"], "voting.k=-1 is invalid: expected an integer >= 1"),
    (["dedup.threshold=1.5"], "dedup.threshold=1.5 is invalid: expected a number in [0.0, 1.0]"),
    (["sampling.answer.temperature=-0.1"], "sampling.answer.temperature=-0.1 is invalid: expected a number >= 0.0"),
    (["backend.name=tgi"], "backend.name='tgi' is invalid: expected one of ['hf', 'vllm', 'fast']"),
    (["eval.tasks=[not_a_task]"], "eval.tasks=['not_a_task'] is invalid: 'not_a_task' is not in eval.benchmarks "
                                  "(available: ['asdiv', 'gsm8k', 'gsm_plus_mini'])"),
    (["trainer.devices=4", "train.global_batch_size=30"],
     "train.global_batch_size=30 is invalid: expected a multiple of trainer.devices x trainer.num_nodes = 4"),
    (["train.data=/no/such/file.jsonl"], "train.data='/no/such/file.jsonl' is invalid: no such file (expected a chat"),
    # ranges and cross-field rules the walker's type-based probes do not reach
    (["model@teacher=llama3_8b_instruct", "teacher.hf_id=llama3"],
     "teacher.hf_id='llama3' is invalid: expected a hub id 'org/name' or an existing folder"),
    (["teacher.gguf_file=nope.gguf"], "teacher.gguf_file='nope.gguf' is invalid: 'nope.gguf' not found in package"),
    (["model@teacher=tiny_llama", "teacher.num_attention_heads=3"],
     "teacher.num_attention_heads=3 is invalid: expected a divisor of hidden_size (64)"),
    (["trainer=deepspeed_stage_2", "trainer.deepspeed.stage=4"],
     "trainer.deepspeed.stage=4 is invalid: expected one of [0, 1, 2, 3]"),
    (["trainer=deepspeed_stage_2", "trainer.deepspeed.offload_parameters=true"],
     "trainer.deepspeed.offload_parameters=True is invalid with trainer.deepspeed.stage=2: expected stage 3"),
    (["trainer=gpu", "trainer.strategy=deepspeed"], "trainer.deepspeed=None is invalid with trainer.strategy="),
    (["train.resume=sometimes"], "train.resume='sometimes' is invalid: expected false, true or 'auto'"),
    (["train=lora", "~train.lora.r"], "train.lora={'alpha': 32, 'dropout': 0.05, 'target_modules': ['q_proj', "),
    (["train.optimizer.betas=[0.9,1.5]"], "train.optimizer.betas=[0.9, 1.5] is invalid: expected a list of two"),
    (["eval.generator=fast", "eval.device=cuda"], "eval.generator='fast' is invalid with eval.device='cuda'"),
    (["eval.trained_path=/no/such/export"], "eval.trained_path='/no/such/export' is invalid: expected an existing"),
    (["eval.benchmarks.gsm8k.question_template=py:os.system"],
     "eval.benchmarks.gsm8k.question_template='py:os.system' is invalid: expected a py: reference under"),
    (["eval.benchmarks.gsm_plus_mini.loader_options.include_critical_thinking=1"],
     "include_critical_thinking=1 is invalid: expected a bool"),
    (["+eval.benchmarks.gsm8k.loader_options.subset=hard"], "loader_options.subset='hard' is invalid: expected an "
                                                            "option of gsm8k"),
    (["eval.benchmarks.gsm8k.regex='(unclosed'"], "eval.benchmarks.gsm8k.regex='(unclosed' is invalid"),
    (["verify=mc", "verify.threshold=1.5"], "verify.threshold=1.5 is invalid: expected a number in [0.0, 1.0]"),
    (["gap.top_p=0"], "gap.top_p=0 is invalid: expected a number in (0, 1]"),
    (["gap.pass_k=[true]"], "gap.pass_k=[True] is invalid: expected a non-empty list of integers >= 1"),
    (["optimized_metric=flexible-extract"], "optimized_metric='flexible-extract' is invalid: expected null or "
                                            "'<stage>/<metric>'"),
    (["backend=vllm", "backend.gpu_memory_utilization=0"], "backend.gpu_memory_utilization=0 is invalid"),
    (["logger.mode=loud"], "logger.mode='loud' is invalid: expected one of ['auto', 'online', 'offline', 'disabled']"),
    (["dedup.embedder=bert"], "dedup.embedder='bert' is invalid: expected one of ['all-MiniLM-L6-v2']"),
    (["questions=seed_augment", "questions.augment_prompts.harder=no placeholder"],
     "questions.augment_prompts.harder='no placeholder' is invalid: expected a string containing {question}"),
    (["questions=dataset", "questions.dataset.loader=file", "questions.dataset.path=/no/such.jsonl"],
     "questions.dataset.path='/no/such.jsonl' is invalid: expected an existing .jsonl/.json/.csv file"),
    (["sampling=paper", "sampling.rewrite.n=4"], "sampling.rewrite.n=4 is invalid: expected 1"),
    (["voting.k=true"], "voting.k=True is invalid: expected an integer >= 1"),  # bool is not an int
])
def test_named_bad_values(overrides, line, make):
    with pytest.raises(ConfigError) as e:
        validate(make(*overrides))
    assert line in str(e.value)


@pytest.mark.parametrize("override,names", [
    ("backend=tgi", ["backend/tgi", "fast", "hf", "vllm"]),
    ("model@teacher=gpt5", ["model/gpt5", "smollm2_135m_instruct", "tiny_llama"]),
    ("logger=mlflow", ["logger/mlflow", "csv", "wandb"]),
])
def test_unknown_option_is_a_hydra_error_listing_the_options(override, names, tmp_path):
    with pytest.raises(HydraException) as e:
        compose_cfg([override], tmp_path)
    assert all(n in str(e.value) for n in names)


@pytest.mark.parametrize("overrides", [
    ["train.resume=auto"], ["train.resume=true"], ["trainer.devices=auto"], ["train.max_steps=-1"],
    ["model@teacher=llama3_8b_instruct", "teacher.hf_id=null", f"teacher.local_path={ROOT}"],
    ["eval.limit=0.5"], ["eval.tasks=null"], ["optimized_metric=eval/gsm8k/flexible-extract"],
])
def test_good_values_pass(overrides, make):
    validate(make(*overrides))


def test_all_errors_reported_at_once(tmp_path):
    cfg = compose_cfg(["voting.k=0", "dedup.threshold=2"], tmp_path)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "voting.k" in str(e.value) and "dedup.threshold" in str(e.value)


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


# ----- issue 21 item 7: unknown `+` keys and path keys, rejected before any model loads, naming the key ----------

@pytest.mark.parametrize("overrides,line", [
    (["+sampling.num_question=3"], "sampling.num_question=3 is invalid: unknown key; expected one of the keys "
                                   "['name', 'num_questions', "),
    (["+sampling.num_question=3"], "(did you mean sampling.num_questions?)"),
    (["+sampling.question.temprature=0.5"], "sampling.question.temprature=0.5 is invalid: unknown key"),
    (["+voting.kk=5"], "voting.kk=5 is invalid: unknown key"),
    (["+backend.batchsize=4"], "backend.batchsize=4 is invalid: unknown key"),
    (["+seeed=1"], "seeed=1 is invalid: unknown key"),
    (["stages=[generate,train]", "+train.learning_rate=0.1"], "train.learning_rate=0.1 is invalid: unknown key"),
    (["stages=[generate,train]", "+trainer.gpus=2"], "trainer.gpus=2 is invalid: unknown key"),
    (["stages=[eval]", "+eval.benchmarks.gsm8k.templat=x"], "eval.benchmarks.gsm8k.templat='x' is invalid: unknown"),
    (["stages=[gap]", "+gap.n_sample=3"], "gap.n_sample=3 is invalid: unknown key"),
    (["verify=mc", "+verify.treshold=0.5"], "verify.treshold=0.5 is invalid: unknown key"),
])
def test_unknown_key_in_a_known_group_is_rejected(overrides, line, tmp_path):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(overrides, tmp_path))
    assert line in str(e.value)


def test_hydra_target_keys_are_not_data(tmp_path):
    """`_target_` (hydra.utils.instantiate) is construction, never an unknown key; it must be a dotted path."""
    cfg = compose_cfg([], tmp_path)
    assert all(str(cfg[g]._target_).startswith("crescent.") for g in ("backend", "logger", "trainer"))
    validate(cfg)
    with pytest.raises(ConfigError, match=r"backend._target_='not a path' is invalid: expected a dotted path"):
        validate(compose_cfg(["backend._target_=not a path"], tmp_path))


@pytest.mark.parametrize("overrides,line", [
    (["paths.cache_dir=/dev/null"], "paths.cache_dir='/dev/null' is invalid: expected a folder"),
    (["paths.cache_dir=/etc/passwd/cache"], "paths.cache_dir='/etc/passwd/cache' is invalid: expected a folder; "
                                            "'/etc/passwd' is a file"),
    (["stages=[generate,train]", "train.data=/etc/passwd"],
     "train.data='/etc/passwd' is invalid: expected a chat `messages` jsonl (a file ending in .jsonl)"),
    (["questions=dataset", "questions.dataset.loader=file", "questions.dataset.path=../../../../etc/shadow"],
     "questions.dataset.path='../../../../etc/shadow' is invalid: expected a question dataset (.jsonl/.json/.csv)"),
    (["questions=dataset", "questions.dataset.loader=file", "questions.dataset.path=/no/such.jsonl"],
     "questions.dataset.path='/no/such.jsonl' is invalid: expected an existing .jsonl/.json/.csv file"),
])
def test_bad_path_names_key_and_allowed(overrides, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ../../../../etc/shadow from /tmp/pytest-of-*/pytest-*/<test>/ is /etc/shadow
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(overrides, tmp_path))
    assert line in str(e.value)


@pytest.mark.parametrize("row,ok", [
    ('{"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}', True),
    ('{"prompt": "1+1?", "completion": "2"}', False),
    ("root:x:0:0:root:/root:/bin/bash", False),
    ("", False),
])
def test_train_data_first_row_is_a_chat_row(row, ok, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text(row + "\n")
    cfg = compose_cfg(["stages=[generate,train]", f"train.data={data}"], tmp_path)
    if ok:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match=r"train.data='.*sft.jsonl' is invalid: its first row is not a JSON "
                                              r"object with a `messages` list"):
            validate(cfg)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_unreadable_dataset_file_is_named(tmp_path):
    data = tmp_path / "questions.jsonl"
    data.write_text('{"question": "1+1?"}\n')
    data.chmod(0)
    cfg = compose_cfg(["questions=dataset", "questions.dataset.loader=file", f"questions.dataset.path={data}"],
                      tmp_path)
    with pytest.raises(ConfigError, match=r"questions.dataset.path='.*' is invalid: the file cannot be read"):
        validate(cfg)


# ----- one source of truth -------------------------------------------------------------------------------------

def test_config_hash_keeps_its_values(tmp_path):
    """The synth cache key is stable_hash(synth_config) and equals the key of the code before the config package
    (sha256 of the sorted JSON, 16 hex), so existing caches stay valid."""
    import hashlib
    import json

    from crescent.config import synth_config
    from crescent.utils.hashing import stable_hash

    cfg = compose_cfg([], tmp_path)
    old = hashlib.sha256(json.dumps(synth_config(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert config_hash(cfg) == stable_hash(synth_config(cfg)) == old


def test_option_unions_list_the_choices_in_their_order():
    """The schema's group options (discriminated unions) are the choices' Literals, in the same order."""
    from typing import get_args

    from crescent.config import choices, schema
    from crescent.config.fields import _models, _tags

    for field, values in (("backend", choices.BACKENDS), ("dedup", choices.DEDUP), ("logger", choices.LOGGERS),
                          ("teacher", choices.MODEL_SOURCES)):
        tags = [t for m in _models(schema.Run.model_fields[field].annotation) for t in _tags(m)]
        assert sorted(tags) == sorted(values), field
    assert set(schema.JUDGES) == set(choices.VERIFY_NAMES) - {"none", "all_of"}
    assert get_args(choices.Backend) == choices.BACKENDS


def test_config_imports_no_stage_module():
    """The config package is a service layer: importing it loads no stage (nor anything above utils)."""
    code = ("import sys, crescent.config as c; from crescent.config import checks; "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] != ['crescent', 'config'] "
            "and m.startswith('crescent.') and not m.startswith('crescent.utils')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_describe_lists_every_leaf_of_a_full_composition(tmp_path):
    """describe() (the schema as rows, for docs and help) has a row for every leaf the YAML tree composes."""
    import re

    from crescent.config import describe

    rows = describe()
    keys = {re.sub(r"\[[^]]*\]", "", r.key) for r in rows}
    assert all(r.allowed and r.allowed != "a valid value" for r in rows), [r for r in rows if not r.allowed]
    cfg = OmegaConf.to_container(compose_cfg(["debug=default", ALL_STAGES, "verify=mc"], tmp_path), resolve=False)

    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict) and v and k not in ("benchmarks", "lm_eval", "loader_options", "benchmark"):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    prefixes = {k.rsplit(".", i)[0] for k in keys for i in (1, 2)}  # mappings described key by key
    missing = [k for k in leaves(cfg) if k not in keys and k not in prefixes]
    assert not missing, missing
