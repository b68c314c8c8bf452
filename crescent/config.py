"""Config checks that run before any model loads, and the hash that keys cached synthetic data."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import Container, DictConfig, OmegaConf

from crescent.synth.formats import FORMATS

STAGES = ("generate", "train", "eval", "gap")
TRAIN = ("sft", "distil", "lora")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "linear", "constant")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
STRATEGIES = ("auto", "ddp", "deepspeed")
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true")
BACKENDS = ("hf", "vllm", "fast")
MODEL_SOURCES = ("embedded", "tiny", "hub")
DEDUP = ("embedding", "none")
DEDUP_INDEX = ("exact", "faiss", "hnsw", "auto")
VOTING = ("majority", "single", "lmsi")
TIE_POLICIES = ("first", "random", "drop")
LOGGERS = ("none", "csv", "wandb")
DTYPES = (None, "float32", "bfloat16", "float16", "auto", "bf16_if_fast")


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Rule:
    allowed: str  # human-readable description of the allowed values
    ok: Callable[[Any], bool]


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def int_at_least(lo: int) -> Rule:
    return Rule(f"an integer >= {lo}", lambda x: _int(x) and x >= lo)


def float_in(lo: float, hi: float) -> Rule:
    return Rule(f"a number in [{lo}, {hi}]", lambda x: _num(x) and lo <= x <= hi)


def float_at_least(lo: float) -> Rule:
    return Rule(f"a number >= {lo}", lambda x: _num(x) and x >= lo)


def one_of(choices: tuple) -> Rule:
    return Rule(f"one of {list(choices)}", lambda x: x in choices)


def nonempty_str() -> Rule:
    return Rule("a non-empty string", lambda x: isinstance(x, str) and x.strip() != "")


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.allowed}", lambda x: x is None or rule.ok(x))


def _decoding(prefix: str, with_n: bool) -> dict[str, Rule]:
    rules = {
        f"{prefix}.temperature": float_at_least(0.0),
        f"{prefix}.top_p": Rule("a number in (0, 1]", lambda x: _num(x) and 0 < x <= 1),
        f"{prefix}.max_new_tokens": int_at_least(1),
    }
    if with_n:
        rules[f"{prefix}.n"] = int_at_least(1)
    return rules


def _model_rules(prefix: str) -> dict[str, Rule]:
    return {
        f"{prefix}.name": nonempty_str(),
        f"{prefix}.source": one_of(MODEL_SOURCES),
        f"{prefix}.trust_remote_code": one_of((False, True)),
    }


RULES: dict[str, Rule] = {
    "seed": int_at_least(0),
    **_model_rules("teacher"),
    **_model_rules("student"),
    "backend.name": one_of(BACKENDS),
    "backend.dtype": one_of(DTYPES),
    "questions.source": one_of(("bait", "dataset", "seed_augment")),
    "questions.answer_format": one_of(("chat", "completion")),
    "questions.formats": Rule(f"a non-empty list drawn from {list(FORMATS)}",
                              lambda x: isinstance(x, list) and bool(x) and all(f in FORMATS for f in x)),
    "questions.answer_prompt": Rule("a string containing {question}", lambda x: isinstance(x, str) and "{question}" in x),
    "questions.calls_per_round": int_at_least(1),
    "questions.max_calls": int_at_least(1),
    "questions.clean.min_words": int_at_least(0),
    "questions.clean.max_chars": int_at_least(1),
    "sampling.num_questions": optional(int_at_least(1)),
    "sampling.answer_chunk": int_at_least(1),
    **_decoding("sampling.question", with_n=True),
    **_decoding("sampling.rewrite", with_n=False),
    **_decoding("sampling.answer", with_n=False),
    "dedup.name": one_of(DEDUP),
    "voting.name": one_of(VOTING),
    "voting.k": int_at_least(1),
    "voting.tie": one_of(TIE_POLICIES),
    "voting.min_agreement": float_in(0.0, 1.0),
    "voting.keep": one_of(("first", "all_agreeing")),
    "voting.reflect": one_of((False, True)),
    "rounds": int_at_least(1),
    "logger.name": one_of(LOGGERS),
}

def _devices_ok(x: Any) -> bool:
    return (_int(x) and (x >= 1 or x == -1)) or x == "auto"


TRAIN_RULES: dict[str, Rule] = {
    "train.name": one_of(TRAIN),
    "train.data": Rule("null or a path to a chat jsonl", lambda x: x is None or isinstance(x, str)),
    "train.val_fraction": Rule("a number in [0, 1)", lambda x: _num(x) and 0 <= x < 1),
    "train.max_seq_len": int_at_least(8),
    "train.epochs": int_at_least(1),
    "train.max_steps": Rule("-1 (use epochs) or an integer >= 1", lambda x: _int(x) and (x == -1 or x >= 1)),
    "train.global_batch_size": int_at_least(1),
    "train.micro_batch_size": int_at_least(1),
    "train.optimizer.name": one_of(OPTIMIZERS),
    "train.optimizer.lr": Rule("a number > 0", lambda x: _num(x) and x > 0),
    "train.optimizer.weight_decay": float_at_least(0.0),
    "train.scheduler.name": one_of(SCHEDULERS),
    "train.scheduler.warmup_ratio": float_in(0.0, 1.0),
    "train.gradient_clip": optional(float_at_least(0.0)),
    "train.kd.alpha": float_in(0.0, 1.0),
    "train.kd.temperature": Rule("a number > 0", lambda x: _num(x) and x > 0),
    "train.resume": one_of((False, True)),
    "trainer.accelerator": one_of(ACCELERATORS),
    "trainer.devices": Rule("an integer >= 1, -1 or 'auto'", _devices_ok),
    "trainer.num_nodes": int_at_least(1),
    "trainer.strategy": one_of(STRATEGIES),
    "trainer.precision": one_of(PRECISIONS),
}

def _shots_ok(x: Any) -> bool:
    items = x if isinstance(x, list) else [x]
    return bool(items) and all(_int(v) and v >= 0 for v in items)


def _limit_ok(x: Any) -> bool:
    return x is None or (_int(x) and x >= 1) or (isinstance(x, float) and 0 < x <= 1)


EVAL_MODELS = ("base", "trained")
EVAL_RULES: dict[str, Rule] = {
    "eval.num_fewshot": Rule("an integer >= 0 or a non-empty list of them", _shots_ok),
    "eval.limit": Rule("null, an integer >= 1, or a fraction in (0, 1]", _limit_ok),
    "eval.batch_size": int_at_least(1),
    "eval.max_gen_toks": int_at_least(1),
    "eval.max_length": int_at_least(16),
    "eval.apply_chat_template": one_of((False, True)),
    "eval.fewshot_as_multiturn": one_of((False, True)),
    "eval.log_samples": one_of((False, True)),
    "eval.dtype": one_of(DTYPES),
    "eval.models": Rule(f"a non-empty list drawn from {list(EVAL_MODELS)}",
                        lambda x: isinstance(x, list) and bool(x) and all(m in EVAL_MODELS for m in x)),
    "eval.bootstrap_iters": int_at_least(0),
    "eval.callback.every_n_epochs": int_at_least(0),
    "eval.callback.limit": int_at_least(1),
    "eval.callback.num_fewshot": int_at_least(0),
    "eval.benchmarks": Rule("a mapping of benchmark configs", lambda x: isinstance(x, dict) and bool(x)),
}
BENCHMARK_KINDS = ("generate", "multiple_choice")
BENCHMARK_RULES: dict[str, Rule] = {
    "kind": one_of(BENCHMARK_KINDS),
    "loader": nonempty_str(),
    "question_template": nonempty_str(),
}


def _benchmark_errors(cfg: DictConfig) -> list[str]:
    """Each eval.benchmarks entry: kind, loader (shipped or file with an existing path), answer."""
    from crescent.eval.benchmarks import SHIPPED
    from crescent.eval.tasks import FILTERS

    benchmarks = get_key(cfg, "eval.benchmarks")
    if not isinstance(benchmarks, dict):
        return []
    errors = []
    tasks = get_key(cfg, "eval.tasks")
    if isinstance(tasks, list):
        errors += [f"  eval.tasks: {t!r} is not in eval.benchmarks (available: {sorted(benchmarks)})"
                   for t in tasks if t not in benchmarks]
    for name, spec in benchmarks.items():
        key = f"eval.benchmarks.{name}"
        if not isinstance(spec, dict):
            errors.append(f"  {key}={spec!r} is invalid: expected a benchmark config")
            continue
        for field, rule in BENCHMARK_RULES.items():
            if not rule.ok(spec.get(field)):
                errors.append(f"  {key}.{field}={spec.get(field)!r} is invalid: expected {rule.allowed}")
        loader = spec.get("loader")
        if loader not in (*SHIPPED, "file"):
            errors.append(f"  {key}.loader={loader!r} is invalid: expected one of {sorted(SHIPPED)} or 'file'")
        if loader == "file":
            for field in ("path", "fewshot_path"):
                path = spec.get(field)
                if (field == "path" or path) and not (isinstance(path, str) and Path(path).expanduser().is_file()):
                    errors.append(f"  {key}.{field}={path!r} is invalid: expected an existing .jsonl/.json/.csv "
                                  "file (absolute, or relative to the directory crescent runs from)")
        if spec.get("answer_field") is None and spec.get("target") is None:
            errors.append(f"  {key}: needs answer_field (a field name) or target (a template)")
        if spec.get("num_fewshot") is not None and not _shots_ok(spec["num_fewshot"]):
            errors.append(f"  {key}.num_fewshot={spec['num_fewshot']!r} is invalid: expected null, an integer >= 0 "
                          "or a list of them")
        bad = [f for f in spec.get("filters") or [] if f not in FILTERS]
        if spec.get("kind") == "generate" and bad:
            errors.append(f"  {key}.filters: {bad} unknown; allowed: {list(FILTERS)}")
        if "custom-regex" in (spec.get("filters") or []) and not spec.get("regex"):
            errors.append(f"  {key}.regex: missing (filter custom-regex needs a regex whose first group is the answer)")
        if spec.get("kind") == "multiple_choice" and spec.get("choices") is None:
            errors.append(f"  {key}.choices: missing (a multiple-choice benchmark needs its choices)")
    return errors


def _questions_errors(cfg: DictConfig) -> list[str]:
    """Source-specific question settings: the bait prompt, or a readable dataset, and few-shot exemplars."""
    source, errors = get_key(cfg, "questions.source"), []
    prompt = get_key(cfg, "questions.prompt")
    if source == "bait" and not (isinstance(prompt, str) and prompt.strip()):
        errors.append(f"  questions.prompt={prompt!r} is invalid: questions.source=bait needs a non-empty bait prompt")
    if source in ("dataset", "seed_augment") or (isinstance(prompt, str) and "{seed_questions}" in prompt):
        loader, path = get_key(cfg, "questions.dataset.loader"), get_key(cfg, "questions.dataset.path")
        if loader not in ("gsm8k_train", "file"):
            errors.append(f"  questions.dataset.loader={loader!r} is invalid: expected one of ['gsm8k_train', 'file']")
        elif loader == "file" and not (isinstance(path, str) and Path(path).expanduser().is_file()):
            errors.append(f"  questions.dataset.path={path!r} is invalid: expected an existing .jsonl/.json/.csv file")
    if source == "seed_augment":
        prompts = get_key(cfg, "questions.augment_prompts")
        if not isinstance(prompts, dict) or not prompts or not all(
                isinstance(v, str) and "{question}" in v for v in prompts.values()):
            errors.append(f"  questions.augment_prompts={prompts!r} is invalid: expected a mapping of style -> "
                          "prompt containing {question}")
    fewshot = [f for f in (get_key(cfg, "questions.formats") or []) if isinstance(f, str) and f.endswith("_fewshot")]
    exemplars = get_key(cfg, "questions.exemplars")
    if fewshot and not (isinstance(exemplars, list) and exemplars and all(
            isinstance(e, dict) and {"question", "cot", "answer"} <= set(e) for e in exemplars)):
        errors.append(f"  questions.exemplars is invalid: formats {fewshot} need exemplars with question, cot, answer")
    rounds, stages = get_key(cfg, "rounds"), get_key(cfg, "stages")
    if _int(rounds) and rounds > 1 and not (isinstance(stages, list) and "train" in stages):
        errors.append(f"  rounds={rounds} is invalid without the train stage: each round's export is the next "
                      f"round's model (stages={stages!r})")
    if get_key(cfg, "voting.reflect") is True:
        rp = get_key(cfg, "voting.reflect_prompt")
        if not (isinstance(rp, str) and "{question}" in rp and "{response}" in rp):
            errors.append(f"  voting.reflect_prompt={rp!r} is invalid: expected a string with {{question}} and {{response}}")
    return errors


EMBEDDING_DEDUP_RULES: dict[str, Rule] = {
    "dedup.threshold": float_in(0.0, 1.0),
    "dedup.max_attempts": int_at_least(0),
    "dedup.index": one_of(DEDUP_INDEX),
    "dedup.exact_max": int_at_least(1),
    "dedup.batch_size": int_at_least(1),
    "dedup.rewrite_prompt": Rule(
        "a string containing {question} and {neighbour}",
        lambda x: isinstance(x, str) and "{question}" in x and "{neighbour}" in x,
    ),
}

MISSING = object()


def get_key(cfg: Mapping, key: str) -> Any:
    """The value at a dotted key of a config or plain dict (containers as plain data), or MISSING."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, Container) else node


def rule_errors(node: Mapping, rules: Mapping[str, Rule], prefix: str = "") -> list[str]:
    """One line per key of `rules` that is missing from `node` or breaks its rule."""
    errors = []
    for key, rule in rules.items():
        name, value = f"{prefix}.{key}" if prefix else key, get_key(node, key)
        if value is MISSING:
            errors.append(f"  {name}: missing (expected {rule.allowed})")
        elif not rule.ok(value):
            errors.append(f"  {name}={value!r} is invalid: expected {rule.allowed}")
    return errors


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every invalid key (key, bad value, allowed values)."""
    rules = dict(RULES)
    if get_key(cfg, "dedup.name") == "embedding":
        rules.update(EMBEDDING_DEDUP_RULES)
    stages = get_key(cfg, "stages")
    training = isinstance(stages, list) and "train" in stages
    if training:
        rules.update(TRAIN_RULES)
    evaluating = isinstance(stages, list) and "eval" in stages
    if evaluating:
        rules.update(EVAL_RULES)
    errors = rule_errors(cfg, rules)
    if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
        errors.append(f"  stages={stages!r} is invalid: expected a non-empty list drawn from {list(STAGES)}")
    errors += _questions_errors(cfg)
    errors += _train_errors(cfg) if training else []
    errors += _benchmark_errors(cfg) if evaluating else []
    from crescent.verify.checks import verify_errors

    verify = get_key(cfg, "verify")
    errors += [] if verify is MISSING else verify_errors(verify)
    if isinstance(stages, list) and "gap" in stages:
        from crescent.gap.checks import gap_errors

        errors += gap_errors(cfg)
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(errors))


def _train_errors(cfg: DictConfig) -> list[str]:
    errors = []
    data = get_key(cfg, "train.data")
    if isinstance(data, str) and not Path(data).is_file():
        errors.append(f"  train.data={data!r} is invalid: no such file (expected a chat `messages` jsonl)")
    devices, nodes = get_key(cfg, "trainer.devices"), get_key(cfg, "trainer.num_nodes")
    gbs, mbs = get_key(cfg, "train.global_batch_size"), get_key(cfg, "train.micro_batch_size")
    if all(_int(v) and v >= 1 for v in (devices, nodes, gbs, mbs)) and gbs % (devices * nodes):
        errors.append(f"  train.global_batch_size={gbs} is invalid: expected a multiple of "
                      f"trainer.devices x trainer.num_nodes = {devices * nodes}")
    if get_key(cfg, "trainer.strategy") == "deepspeed" and get_key(cfg, "trainer.accelerator") == "cpu":
        errors.append("  trainer.strategy='deepspeed' is invalid with trainer.accelerator='cpu': "
                      "Lightning's DeepSpeed strategy needs CUDA GPUs (use trainer=cpu here)")
    return errors


# Bump when the generate-stage code changes its output for the same config (cleaning rules, prompts
# rendering, extraction), so cached data made by older code is not reused.
SYNTH_CODE_VERSION = 2
# Everything that changes the generated data; paths, logging and later stages are left out.
SYNTH_KEYS = ("teacher", "backend", "questions", "sampling", "dedup", "voting", "seed")
# Keys inside those that only change speed or placement, never the data.
_NON_DATA = {"backend": ("device", "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager")}


def synth_config(cfg: DictConfig) -> dict:
    """The part of the config that determines the synthetic data."""
    out = {}
    for key in SYNTH_KEYS:
        value = get_key(cfg, key)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _NON_DATA.get(key, ())}
        out[key] = None if value is MISSING else value
    out["synth_code_version"] = SYNTH_CODE_VERSION
    return out


def config_hash(cfg: DictConfig, keys_hint: str = "") -> str:
    """A short stable hash of the generation config (keys sorted, JSON)."""
    blob = json.dumps(synth_config(cfg), sort_keys=True, default=str) + keys_hint
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
