"""Strict config validation (issue 8): every leaf of every group option rejects a bad value, naming the key, the
value and what is allowed; the issue's named examples; validate() is fast and loads no model."""
import copy
import fnmatch
import json
import subprocess
import sys
import time

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict

from helpers import CONF, ROOT, compose_cfg
from crescent.config import ConfigError, validate

ALL_STAGES = "stages=[generate,train,eval,gap]"  # every stage, so every conditional rule table is active
# group dir -> the override that picks its option
GROUPS = {"backend": "backend", "dedup": "dedup", "eval": "eval", "gap": "gap", "logger": "logger",
          "model": "model@teacher", "paths": "paths", "questions": "questions", "sampling": "sampling",
          "train": "train", "trainer": "trainer", "verify": "verify", "voting": "voting"}
NOT_SELECTABLE = {"eval/common"}  # the eval presets' shared base: it has no benchmarks of its own
# Probes a leaf rightly accepts (fnmatch pattern -> probes, None = all), each with its reason. Keep it short.
ACCEPTS = {
    "eval.benchmarks.*.lm_eval.*": None,  # extra lm-eval task keys, passed through to lm-eval untyped
    "eval.benchmarks.*.target": {12345, "not-a-number"},  # a Jinja template or an integer choice index
    "eval.vllm.batch_size": {12345},  # 'auto' or an integer
}
NEGATIVE_ONE_OK = {"train.max_steps", "trainer.devices"}  # -1 means "use epochs" / "all devices": probe -2
FRACTIONS = {"threshold", "quantile", "top_p", "min_agreement", "alpha", "warmup_ratio", "min_lr_ratio",
             "val_fraction", "gpu_memory_utilization", "dropout"}  # float leaves that must also reject 1.5


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if f"{group}/{p.stem}" not in NOT_SELECTABLE)


def compositions():
    """Option i of every group together (the model group also as student, shifted by one), then debug=default:
    every option of every group is composed at least once."""
    opts = {g: options(g) for g in GROUPS}
    for i in range(max(map(len, opts.values()))):
        picks = [f"{GROUPS[g]}={o[i % len(o)]}" for g, o in opts.items()]
        yield [*picks, f"model@student={opts['model'][(i + 1) % len(opts['model'])]}"]
    yield ["debug=default"]


def leaves(node, prefix=""):
    """(dotted key, value) of every leaf of plain config data: scalars, lists and empty mappings."""
    for k, v in node.items():
        if isinstance(v, dict) and v:
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def probes(key, value):
    """Bad values chosen by the leaf's type."""
    if value is None:
        return [{"bad": 1}]
    if isinstance(value, bool):
        return ["maybe"]
    if isinstance(value, int):
        return ["not-a-number", -2 if key in NEGATIVE_ONE_OK else -1]
    if isinstance(value, float):
        return ["x", -0.5, *([1.5] if key.rsplit(".", 1)[-1] in FRACTIONS else [])]
    if isinstance(value, str):
        return [12345, [12345]]
    if isinstance(value, list):
        numeric = value and all(isinstance(v, (int, float)) for v in value)
        return [{"bad": 1}, ["x"] if numeric else [12345]]
    return [12345]  # an empty mapping


def accepted(key, bad):
    return any(fnmatch.fnmatchcase(key, pat) and (ok is None or (not isinstance(bad, (dict, list)) and bad in ok))
               for pat, ok in ACCEPTS.items())


def rejected(cfg, key, bad):
    """None when validate rejects `bad` at `key` with a line naming the key, the value and what is allowed."""
    try:
        validate(cfg)
    except ConfigError as e:
        lines = str(e).splitlines()
        if any(key in line and repr(bad) in line and ("expected" in line or "allowed" in line) for line in lines):
            return None
        return f"{key}={bad!r}: no line names key, value and allowed values:\n{e}"
    except Exception as e:  # noqa: BLE001 - a crash is a failure too
        return f"{key}={bad!r}: crashed with {type(e).__name__}: {e}"
    return f"{key}={bad!r}: accepted"


def walk(cfg, seen):
    """Set each leaf in turn to each probe (then restore it); returns (cases, failures). The composed config has
    no `hydra` node (compose_cfg leaves it out)."""
    data, raw = OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg, resolve=False)
    cases, failures = 0, []
    for key, value in leaves(data):
        top = key.split(".")[0]
        owner = data[top].get("name", top) if isinstance(data[top], dict) else ""
        if (key, owner, repr(value)) in seen:
            continue
        seen.add((key, owner, repr(value)))
        original = raw
        for part in key.split("."):
            original = original[part]
        for bad in probes(key, value):
            if accepted(key, bad):
                continue
            OmegaConf.update(cfg, key, bad, merge=False)
            try:
                failure = rejected(cfg, key, bad)
            finally:
                OmegaConf.update(cfg, key, original, merge=False)
            cases += 1
            failures += [failure] if failure else []
    return cases, failures


def test_every_leaf_of_every_group_option_rejects_bad_values(tmp_path, capsys):
    seen, cases, failures, benchmarks = set(), 0, [], set()
    runs = list(compositions())
    for overrides in runs:
        cfg = compose_cfg([*overrides, ALL_STAGES], tmp_path)
        validate(cfg)  # the option itself is valid
        benchmarks |= set(cfg.eval.benchmarks)
        n, bad = walk(cfg, seen)
        cases, failures = cases + n, failures + bad
    extra = sorted(set(options("eval/benchmark")) - benchmarks)  # benchmarks no eval preset includes
    if extra:
        shipped = [b for b in extra if not b.startswith("mnli")]  # MNLI needs the user's file to be selected
        runs.append(["eval=smoke", *(f"+eval/benchmark@eval.benchmarks.{b}={b}" for b in extra),
                     f"eval.tasks=[{','.join(shipped)}]"])
        cfg = compose_cfg([*runs[-1], ALL_STAGES], tmp_path)
        validate(cfg)
        n, bad = walk(cfg, seen)
        cases, failures = cases + n, failures + bad
    with capsys.disabled():
        print(f"\nconfig schema walker: {cases - len(failures)} of {cases} invalid-config cases rejected "
              f"({len(seen)} leaves, {len(runs)} compositions)")
    assert not failures, f"{len(failures)} of {cases} cases:\n" + "\n".join(failures[:20])
    assert cases > 300


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


def test_validate_is_fast(make):
    cfg = make("eval=all", "verify=all_of")
    validate(cfg)  # the first call imports the checks' modules
    t0 = time.perf_counter()
    validate(cfg)
    assert time.perf_counter() - t0 < 0.5


def test_validate_loads_no_model_or_heavy_library():
    code = f"""
import json, sys, time
from hydra import compose, initialize_config_dir
from crescent.config import validate
with initialize_config_dir(config_dir={str(CONF)!r}, version_base="1.3"):
    cfg = compose(config_name="config", overrides=[{ALL_STAGES!r}, "eval=all", "paths.output_dir=/tmp/x"])
t0 = time.perf_counter()
validate(cfg)
heavy = [m for m in ("torch", "transformers", "lm_eval", "datasets", "vllm") if m in sys.modules]
print(json.dumps({{"s": time.perf_counter() - t0, "heavy": heavy}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [] and result["s"] < 0.5, result
