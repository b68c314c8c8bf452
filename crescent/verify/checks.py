"""Config checks for the `verify` group: lists of error lines in crescent.config's style
("  key=value is invalid: expected ..."), run before any model loads."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from crescent.config import (DTYPES, TARGET, TOP_P, Rule, device, float_at_least, float_in, int_at_least, maybe,
                             nonempty_str, one_of, optional, rule_errors, str_list, template)
from crescent.utils.targets import user_target
from crescent.verify.filters import FILTERS

VERIFY_NAMES = ("none", "mc", "cot_binary", "cot_score", "tournament", "all_of")
FORMATS = ("text", "chat")


def _decoding() -> dict[str, Rule]:
    return {"sampling.temperature": float_at_least(0.0), "sampling.top_p": TOP_P,
            "sampling.max_new_tokens": int_at_least(1), "sampling.stop": maybe(str_list())}


_COMMON = {"filter": one_of(FILTERS), "threshold": float_in(0.0, 1.0), "quantile": float_in(0.0, 1.0),
           "format": one_of(FORMATS), "chunk": int_at_least(1), "max_response_chars": optional(int_at_least(16))}
_RULES: dict[str, dict[str, Rule]] = {
    "mc": {**_COMMON, "prompt": template("question", "response"), "positive": nonempty_str(),
           "negative": nonempty_str(), "batch_size": int_at_least(1), "max_length": optional(int_at_least(16)),
           "dtype": one_of(DTYPES), "device": optional(device())},
    "cot_binary": {**_COMMON, "prompt": template("question", "response"), **_decoding()},
    "cot_score": {**_COMMON, "prompt": template("question", "response"), **_decoding(),
                  "score_min": float_at_least(0.0), "score_max": float_at_least(0.0)},
    "tournament": {**_COMMON, "prompt": template("question", "response_a", "response_b"), **_decoding()},
}


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def verify_errors(vcfg: Any, prefix: str = "verify", member: bool = False) -> list[str]:
    """Errors of one verify config (an all_of's members are checked as `verify.verifiers.<name>`)."""
    vcfg = plain(vcfg)
    if vcfg is None:
        return []
    if not isinstance(vcfg, dict):
        return [f"  {prefix}={vcfg!r} is invalid: expected a verify config (verify={'|'.join(VERIFY_NAMES)})"]
    target_errors = rule_errors(vcfg, {"_target_": TARGET}, prefix)
    if target_errors or user_target(vcfg):  # a verifier of the user's own (its _target_ outside crescent) checks
        return target_errors  # its own settings
    name = vcfg.get("name")
    allowed = tuple(n for n in VERIFY_NAMES if n not in ("none", "all_of")) if member else VERIFY_NAMES
    if name not in allowed:
        return [f"  {prefix}.name={name!r} is invalid: expected one of {list(allowed)}"]
    if name == "none":
        return []
    if name == "all_of":
        members = vcfg.get("verifiers")
        if not isinstance(members, dict) or not members:
            return [f"  {prefix}.verifiers={members!r} is invalid: expected a non-empty mapping of verify configs"]
        return [e for m, c in members.items() for e in verify_errors(c, f"{prefix}.verifiers.{m}", member=True)]
    errors = rule_errors(vcfg, _RULES[name], prefix)
    if name == "cot_score" and not errors and not vcfg["score_min"] < vcfg["score_max"]:
        errors.append(f"  {prefix}.score_max={vcfg['score_max']!r} is invalid: expected a number > score_min "
                      f"({vcfg['score_min']!r})")
    return errors
