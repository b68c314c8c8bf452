"""File paths named in benchmark files stay inside allowed roots.

A benchmark file (`path`, `fewshot_path`, `loader_options.path`) may name only files under the directory crescent
is launched from (where relative paths resolve, and where the shipped example's CSV lives) or under a root listed
in `eval.data_roots`. Paths are resolved before the check: `..` and symlinks that lead out are refused like an
absolute path elsewhere. So a benchmark file from a stranger cannot read ~/.ssh or /etc into prompts, sample files
and W&B tables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

# the keys of a benchmark config that name a file (crescent.eval.benchmarks)
PATH_KEYS = ("path", "fewshot_path", "loader_options.path")
# lm-eval task keys that would make lm-eval read data itself (crescent feeds every task's documents)
LM_EVAL_DATA_KEYS = ("custom_dataset", "dataset_path", "dataset_name", "dataset_kwargs")


class PathNotAllowedError(ValueError):
    """A path in a benchmark file that leads outside the launch directory and eval.data_roots."""


def resolve(value: str | Path, base_dir: str | Path) -> Path:
    """`value` with ~ expanded; a relative path joined to base_dir."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def allowed_roots(base_dir: str | Path, data_roots: Iterable[str | Path] | None = ()) -> list[Path]:
    return [Path(r).expanduser().resolve() for r in (base_dir, *(data_roots or ())) if str(r)]


def outside_error(value: Any, key: str, base_dir: str | Path, data_roots: Iterable[str | Path] | None = ()) -> str | None:
    """None when `value` resolves (symlinks followed) under base_dir or one of data_roots; else the message."""
    real = resolve(str(value), base_dir).resolve()
    roots = allowed_roots(base_dir, data_roots)
    if any(real == r or real.is_relative_to(r) for r in roots):
        return None
    return (f"{key}={str(value)!r} is not allowed: it resolves to {real}, outside the directory crescent runs from "
            f"({roots[0]}) and eval.data_roots ({[str(r) for r in roots[1:]]}); move the file under one of them or "
            "add its folder to eval.data_roots (e.g. +eval.data_roots=[/data/benchmarks])")


def check(value: Any, key: str, base_dir: str | Path, data_roots: Iterable[str | Path] | None = ()) -> Path:
    """The resolved path, or PathNotAllowedError naming `key`."""
    error = outside_error(value, key, base_dir, data_roots)
    if error:
        raise PathNotAllowedError(error)
    return resolve(str(value), base_dir)


def benchmark_path_errors(spec: Mapping, key: str, base_dir: str | Path,
                          data_roots: Iterable[str | Path] | None = ()) -> list[str]:
    """Config errors for the file paths of one benchmark config (eval.benchmarks.<name>, gap.benchmark)."""
    if not isinstance(spec, Mapping):
        return []
    errors = []
    options = spec.get("loader_options") if isinstance(spec.get("loader_options"), Mapping) else {}
    for field, value in (("path", spec.get("path")), ("fewshot_path", spec.get("fewshot_path")),
                         ("loader_options.path", options.get("path"))):
        if isinstance(value, (str, Path)) and str(value):
            error = outside_error(value, f"{key}.{field}", base_dir, data_roots)
            errors += [f"  {error}"] if error else []
    lm_eval = spec.get("lm_eval") if isinstance(spec.get("lm_eval"), Mapping) else {}
    errors += [f"  {key}.lm_eval.{k} is not allowed: crescent feeds each task its documents (loader, path); "
               "lm-eval may not load data itself" for k in LM_EVAL_DATA_KEYS if k in lm_eval]
    return errors
