"""Every config key of the schema as rows (docs/config.md, `--help`-style listings): one source for the docs."""
from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from crescent.config import schema as S
from crescent.config.fields import _dict_value, _models, _strip, _tags, field_allowed


class Key(NamedTuple):
    key: str  # dotted key; a group option's keys carry it: "backend[hf].batch_size"
    type: str  # the Python type pydantic checks
    default: Any  # "required" when the key must be present
    allowed: str  # what the key accepts, in the words of the error messages
    help: str  # the field's description (empty where the schema has none)


def _type_name(tp: Any) -> str:
    tp = _strip(tp)
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _walk(model: type[BaseModel], prefix: str) -> list[Key]:
    rows = []
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        models = _models(info.annotation)
        if len(models) > 1:  # a group's options
            for m in models:
                rows += _walk(m, f"{key}[{'|'.join(map(str, _tags(m)))}]")
            continue
        if models and _dict_value(info.annotation) is None and not info.metadata:
            rows += _walk(models[0], key)
            continue
        default = "required" if info.default is PydanticUndefined else info.default
        rows.append(Key(key, _type_name(info.annotation), default, field_allowed(info), info.description or ""))
    return rows


def describe() -> list[Key]:
    """Every key: the root and the groups every run uses, the stage groups, benchmarks and verifiers."""
    rows = [r for r in _walk(S.Run, "") if r.key not in ("train", "trainer", "eval", "verify", "gap", "decontam")]
    rows += _walk(S.DecontamOn, "decontam")
    rows += _walk(S.TrainStage, "") + [r for r in _walk(S.EvalStage, "") if not r.key.endswith(".vllm")]
    rows += _walk(S.EvalVllm, "eval.vllm") + _walk(S.Benchmark, "eval.benchmarks.<name>")
    rows += [r for r in _walk(S.Gap, "gap") if r.key != "gap.benchmark"] + _walk(S.Benchmark, "gap.benchmark")
    rows += [r for name, m in S.JUDGES.items() for r in _walk(m, f"verify[{name}]")]
    rows += [Key(f"{group}._target_", "str", "set by each option", "a dotted path module.Name of the class or "
                 "function that builds it", "built with hydra.utils.instantiate: a YAML of your own with a _target_ "
                 "adds a new one") for group in ("backend", "logger", "trainer", "verify")]
    return rows
