"""Config checks for stages=[gap] (cfg.gap and cfg.verify), in crescent.config's error style."""
from __future__ import annotations

from typing import Any

from crescent.config import (MISSING, TOP_P, Rule, benchmark_errors, boolean, float_at_least, get_key, int_at_least,
                             nonempty_str, one_of, optional, rule_errors)
from crescent.verify.checks import plain, verify_errors

PERFECT_POLICIES = ("exclude", "zero")  # questions whose samples are all correct, in the relative gap
EMPTY_POLICIES = ("unchanged", "exclude")  # questions with no kept sample, in J_f and the gaps


def _limit_ok(x: Any) -> bool:
    return x is None or (isinstance(x, int) and not isinstance(x, bool) and x >= 1) or (
        isinstance(x, float) and 0 < x <= 1)


def _pass_k_ok(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in x)


GAP_RULES: dict[str, Rule] = {
    "limit": Rule("null (use eval.limit), an integer >= 1, or a fraction in (0, 1]", _limit_ok),
    "n_samples": int_at_least(1),
    "temperature": float_at_least(0.0),
    "top_p": TOP_P,
    "max_new_tokens": int_at_least(1),
    "num_fewshot": int_at_least(0),
    "chat": boolean(),
    "chunk": int_at_least(1),
    "cache": boolean(),
    "question_field": optional(nonempty_str()),
    "pass_k": Rule("a non-empty list of integers >= 1", _pass_k_ok),
    "perfect_question_policy": one_of(PERFECT_POLICIES),
    "empty_keep_policy": one_of(EMPTY_POLICIES),
}


def gap_errors(cfg: Any) -> list[str]:
    """Errors of cfg.gap (the whole run config is passed); gap.benchmark is checked as an eval benchmark."""
    gap = plain(get_key(cfg, "gap"))
    if gap is MISSING or not isinstance(gap, dict):
        return ["  gap: missing (add `+gap=default`, or `- gap: default` to the defaults list)"]
    bench = gap.get("benchmark")
    errors = rule_errors(gap, GAP_RULES, "gap")
    errors += benchmark_errors(bench, "gap.benchmark", get_key(cfg, "eval.data_roots"))
    if isinstance(bench, dict) and bench.get("kind") == "multiple_choice":
        errors.append("  gap.benchmark.kind='multiple_choice' is invalid: expected 'generate' (answers are extracted "
                      "numbers)")
    return errors


def stage_errors(cfg: Any) -> list[str]:
    """Everything stages=[gap] needs: gap_errors plus the verify group's errors (verify absent = none)."""
    verify = get_key(cfg, "verify")
    return gap_errors(cfg) + verify_errors(None if verify is MISSING else verify)
