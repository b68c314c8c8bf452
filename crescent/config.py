"""Config checks that run before any model loads, and the hash that keys cached synthetic data."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from omegaconf import Container, DictConfig, OmegaConf

STAGES = ("generate",)
BACKENDS = ("hf", "vllm")
MODEL_SOURCES = ("embedded", "tiny", "hub")
DEDUP = ("embedding", "none")
DEDUP_INDEX = ("exact", "faiss", "hnsw", "auto")
VOTING = ("majority", "single")
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
    "questions.prompt": nonempty_str(),
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
    "logger.name": one_of(LOGGERS),
}

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

_MISSING = object()


def _get(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return _MISSING
        node = node[part]
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, Container) else node


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every invalid key (key, bad value, allowed values)."""
    rules = dict(RULES)
    if _get(cfg, "dedup.name") == "embedding":
        rules.update(EMBEDDING_DEDUP_RULES)
    errors = []
    for key, rule in rules.items():
        value = _get(cfg, key)
        if value is _MISSING:
            errors.append(f"  {key}: missing (expected {rule.allowed})")
        elif not rule.ok(value):
            errors.append(f"  {key}={value!r} is invalid: expected {rule.allowed}")
    stages = _get(cfg, "stages")
    if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
        errors.append(f"  stages={stages!r} is invalid: expected a non-empty list drawn from {list(STAGES)}")
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(errors))


# Everything that changes the generated data; paths, logging and later stages are left out.
SYNTH_KEYS = ("teacher", "backend", "questions", "sampling", "dedup", "voting", "seed")
# Keys inside those that only change speed or placement, never the data.
_NON_DATA = {"backend": ("device", "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager")}


def synth_config(cfg: DictConfig) -> dict:
    """The part of the config that determines the synthetic data."""
    out = {}
    for key in SYNTH_KEYS:
        value = _get(cfg, key)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _NON_DATA.get(key, ())}
        out[key] = None if value is _MISSING else value
    return out


def config_hash(cfg: DictConfig, keys_hint: str = "") -> str:
    """A short stable hash of the generation config (keys sorted, JSON)."""
    blob = json.dumps(synth_config(cfg), sort_keys=True, default=str) + keys_hint
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
