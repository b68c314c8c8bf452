"""Field types of the config schema and the formatter that turns pydantic's errors into crescent's lines
("  key=value is invalid: expected <allowed>", "  key: missing (expected <allowed>)"), all errors at once.

Each type is a pydantic type (strict: no coercion, bool is not an int) with its constraints, annotated with
Allowed(text): the human wording of what the key accepts, used in error messages and in describe()."""
from __future__ import annotations

import difflib
import math
import re
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Optional, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

MISSING = object()


@dataclass(frozen=True)
class Unresolved:
    """A config value whose interpolation could not be resolved."""
    raw: str
    error: str


@dataclass(frozen=True)
class Allowed:
    """What a field accepts, in words (error messages, describe())."""
    text: str


class Section(BaseModel):
    """A config group or nested mapping: strict types, unknown keys are errors."""
    model_config = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)


class WholeSection(Section):
    """A nested mapping whose missing or unknown keys are reported on the mapping itself
    ("  key={...} is invalid: expected a mapping with keys [...]")."""


def _check(ok: Callable[[Any], bool]) -> Callable[[Any], Any]:
    def check(x: Any) -> Any:
        if not ok(x):
            raise ValueError("not allowed")
        return x
    return check


def Check(allowed: str, ok: Callable[[Any], bool]) -> Any:
    """A value any Python type may hold, accepted when ok(value) (the few rules no pydantic type says)."""
    return Annotated[Any, AfterValidator(_check(ok)), Allowed(allowed)]


def is_num(x: Any) -> bool:  # finite only: inf / nan are never a valid temperature, rate or fraction
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_str(x: Any) -> bool:
    return isinstance(x, str) and x.strip() != ""


def Int(ge: int, allowed: str | None = None) -> Any:
    return Annotated[int, Field(strict=True, ge=ge), Allowed(allowed or f"an integer >= {ge}")]


def Num(ge: float | None = None, le: float | None = None, gt: float | None = None, lt: float | None = None,
        allowed: str | None = None) -> Any:
    if allowed is None:
        allowed = (f"a number in [{ge}, {le}]" if ge is not None and le is not None else f"a number >= {ge}"
                   if ge is not None else f"a number > {gt}")
    return Annotated[float, Field(strict=True, allow_inf_nan=False, ge=ge, le=le, gt=gt, lt=lt), Allowed(allowed)]


POSITIVE = Num(gt=0)
FRACTION = Num(ge=0, lt=1, allowed="a number in [0, 1)")
TOP_P = Num(gt=0, le=1, allowed="a number in (0, 1]")
SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed_everything limit
SEED = Annotated[int, Field(strict=True, ge=0, le=SEED_MAX),
                 Allowed(f"an integer in [0, {SEED_MAX}] (what numpy, torch and Lightning accept)")]
BOOL = Annotated[bool, Field(strict=True), Allowed("true or false")]
STR = Annotated[str, Field(strict=True), Allowed("a string")]
NONEMPTY = Annotated[str, Field(strict=True), AfterValidator(_check(is_str)), Allowed("a non-empty string")]
MAPPING = Annotated[dict, Field(strict=True), Allowed("a mapping")]


def OneOf(choices: Any) -> Any:
    """One value of a Literal (the type must match too: True is not 1)."""
    values = get_args(choices)
    return Annotated[choices, BeforeValidator(_check(lambda x: any(type(x) is type(c) and x == c for c in values))),
                     Allowed(f"one of {list(values)}")]


def StrList(nonempty: bool = False) -> Any:
    return Annotated[list[str], Field(strict=True, min_length=1 if nonempty else 0),
                     Allowed(f"a {'non-empty ' if nonempty else ''}list of strings")]


def ListOf(choices: Any) -> Any:
    return Annotated[list[OneOf(choices)], Field(strict=True, min_length=1),
                     Allowed(f"a non-empty list drawn from {list(get_args(choices))}")]


def Template(*fields: str) -> Any:
    """A prompt string holding each {field} placeholder."""
    need = " and ".join("{" + f + "}" for f in fields)
    return Check(f"a string containing {need}",
                 lambda x: isinstance(x, str) and all("{" + f + "}" in x for f in fields))


DEVICE = Check("'cpu', 'cuda' or 'cuda:N'", lambda x: isinstance(x, str) and bool(re.fullmatch(r"cpu|cuda(:\d+)?", x)))


def Null(tp: Any) -> Any:
    """null or tp."""
    return Annotated[Optional[tp], Allowed(f"null or {allowed_of(tp)}")]


def allowed_of(tp: Any) -> str:
    for m in reversed(getattr(tp, "__metadata__", ())):
        if isinstance(m, Allowed):
            return m.text
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"a mapping with keys {list(tp.model_fields)}"
    if get_origin(tp) is Literal:  # a group option's tag
        return f"one of {list(get_args(tp))}"
    return "a valid value"


def field_allowed(info: Any) -> str:
    for m in reversed(info.metadata):
        if isinstance(m, Allowed):
            return m.text
    return allowed_of(info.annotation)


# ----- errors ---------------------------------------------------------------------------------------------------


def _strip(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _models(tp: Any) -> list[Any]:
    """The model classes a (nullable / union) annotation may hold."""
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    if get_origin(tp) in (Union, getattr(typing, "UnionType", Union)) or type(tp).__name__ == "UnionType":
        return [m for a in get_args(tp) for m in _models(a)]
    return []


def _dict_value(tp: Any) -> Any:
    """V of dict[str, V] (possibly nullable), else None."""
    tp = _strip(tp)
    for t in [tp, *get_args(tp)] if get_origin(tp) is Union else [tp]:
        t = _strip(t)
        if get_origin(t) is dict and len(get_args(t)) == 2:
            return get_args(t)[1]
    return None


def _tags(model: Any) -> tuple:
    """The discriminator values of a union member (its `name` or `source` Literal)."""
    for f in ("name", "source"):
        info = model.model_fields.get(f)
        if info is not None and get_origin(_strip(info.annotation)) is Literal:
            return get_args(_strip(info.annotation))
    return ()


def _get(node: Any, part: Any) -> Any:
    return node[part] if isinstance(node, dict) and part in node else MISSING


def _contains_unresolved(x: Any) -> Unresolved | None:
    if isinstance(x, Unresolved):
        return x
    for v in x.values() if isinstance(x, dict) else x if isinstance(x, list) else ():
        u = _contains_unresolved(v)
        if u:
            return u
    return None


def _unknown(key: str, value: Any, fields: list[str]) -> str:
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, fields, n=1)
    hint = f" (did you mean {key.rsplit('.', 1)[0]}.{close[0]}?)" if close else ""
    return f"  {key}={value!r} is invalid: unknown key; expected one of the keys {fields}{hint}"


def _line(model: type[BaseModel], data: Any, err: dict, prefix: str) -> str | None:
    """Walk the error's location through the models (dict keys, union tags) down to the field that failed."""
    cls: Any = model
    node, path = data, [prefix] if prefix else []
    owner, owner_node, owner_path = model, data, list(path)  # the innermost model walked into
    annotation, allowed = None, "a valid value"
    for part in err["loc"]:
        if cls is None:
            break
        if isinstance(cls, list):  # a discriminated union: `part` is the tag
            cls = next((m for m in cls if part in _tags(m)), None)
            owner = cls or owner
            continue
        if isinstance(cls, tuple):  # dict[str, V]: `part` is a key
            path.append(str(part))
            node, annotation, allowed = _get(node, part), cls[0], allowed_of(cls[0])
        elif part not in cls.model_fields:
            if issubclass(cls, WholeSection):
                return f"  {'.'.join(path)}={node!r} is invalid: expected a mapping with keys {list(cls.model_fields)}"
            if part == "_target_":
                return None  # construction (hydra.utils.instantiate), not data
            return _unknown(".".join([*path, str(part)]), _get(node, part), list(cls.model_fields))
        else:
            owner, owner_node, owner_path = cls, node, list(path)
            path.append(str(part))
            info = cls.model_fields[part]
            node, annotation, allowed = _get(node, part), info.annotation, field_allowed(info)
        models, value_type = _models(annotation), _dict_value(annotation)
        if isinstance(node, dict) and models:
            cls = models[0] if len(models) == 1 else models
        elif isinstance(node, dict) and value_type is not None:
            cls = (value_type,)
        else:
            cls = None
    key = ".".join(path)
    if err["type"] == "missing":
        if isinstance(owner, type) and issubclass(owner, WholeSection):
            return (f"  {'.'.join(owner_path)}={owner_node!r} is invalid: expected a mapping with keys "
                    f"{list(owner.model_fields)}")
        return f"  {key}: missing (expected {allowed})"
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        members = cls if isinstance(cls, list) else _models(annotation)
        tags = ", ".join(repr(t) for m in members for t in _tags(m))
        tag = err.get("ctx", {}).get("discriminator", "'name'").strip("'")
        if err["type"] == "union_tag_not_found":
            return f"  {key}.{tag}: missing (expected one of [{tags}])"
        return f"  {key}.{tag}={err['ctx']['tag']!r} is invalid: expected one of [{tags}]"
    unresolved = _contains_unresolved(node)
    if unresolved:
        if unresolved.raw.startswith("${hydra:"):  # ${hydra:...} resolves only inside a Hydra run
            return None
        return f"  {key}={unresolved.raw!r} is invalid: it does not resolve ({unresolved.error})"
    return f"  {key}={node!r} is invalid: expected {allowed}"


def errors_of(model: type[BaseModel], data: Any, prefix: str = "") -> list[str]:
    """One line per invalid key of `data` checked against `model` (pydantic's errors, crescent's wording)."""
    try:
        model.model_validate(data)
        return []
    except ValidationError as e:
        lines: list[str] = []
        for err in e.errors():
            line = _line(model, data, err, prefix)
            if line and line not in lines:
                lines.append(line)
        return lines


__all__ = ["MISSING", "Unresolved", "Allowed", "Section", "WholeSection", "Check", "Int", "Num", "POSITIVE",
           "FRACTION", "TOP_P", "SEED", "SEED_MAX", "BOOL", "STR", "NONEMPTY", "MAPPING", "OneOf", "StrList",
           "ListOf", "Template", "DEVICE", "Null", "allowed_of", "errors_of", "is_num", "is_int", "is_str"]
