"""lm-eval task configs (dicts) built from `eval.benchmarks.<name>` config entries.

Generation tasks get lm-eval's gsm8k semantics: the prompt template, greedy decoding until the stop
strings, named answer filters (regex → take_first, reported side by side) and the benchmark's `metric`
list: exact_match (lm-eval's, gsm8k's normalisation unless the benchmark's `exact_match` overrides it)
and/or math_equal (crescent.eval.scoring: the answer means the gold). A benchmark with its own
`process_results` (MATH, Sudoku) reports the metrics that function returns. Multiple-choice tasks are
scored by log-likelihood (acc, acc_norm).
"""
from __future__ import annotations

import importlib
import inspect
from functools import partial
from typing import Any, Mapping

from crescent.eval.benchmarks import load_docs, same_subject_sampler

KINDS = ("generate", "multiple_choice")
# lm-eval gsm8k.yaml (v3): strict = the number after '#### '; flexible = the last number in the text
STRICT = r"#### (\-?[0-9\.\,]+)"
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
ANSWER_IS = r"The answer is (\-?[0-9\.\,]+)."  # lm-eval gsm8k-cot's strict regex
BOXED = r"\\boxed\{([^{}]*)\}"
FILTERS = ("strict-match", "flexible-extract", "answer-is", "boxed", "crescent-extract", "custom-regex",
           "remove_whitespace", "none")
GEN_METRICS = ("exact_match", "math_equal")
# gsm8k.yaml's exact_match: commas, '$', a trailing '.' and everything up to '#### ' are ignored
EXACT_MATCH = {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
               "ignore_punctuation": False, "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}
SAMPLERS = {"same_subject": same_subject_sampler}
ALLOWED_PY = ("crescent.", "lm_eval.")


def _regex_filter(name: str, pattern: str, last: bool = False) -> dict:
    regex = {"function": "regex", "regex_pattern": pattern}
    if last:
        regex["group_select"] = -1
    return {"name": name, "filter": [regex, {"function": "take_first"}]}


def crescent_extract(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval custom filter: crescent's own answer extraction (the one voting uses at train time)."""
    from crescent.answers import extract_answer

    return [[extract_answer(r) or "[invalid]" for r in inst] for inst in resps]


def filter_entry(name: str, regex: str | None = None) -> dict:
    """One lm-eval filter_list entry by name (see FILTERS)."""
    if name == "strict-match":
        return _regex_filter(name, STRICT)
    if name == "flexible-extract":
        return _regex_filter(name, FLEXIBLE, last=True)
    if name == "answer-is":
        return _regex_filter(name, ANSWER_IS)
    if name == "boxed":
        return _regex_filter(name, BOXED, last=True)
    if name == "crescent-extract":
        return {"name": name, "filter": [{"function": "custom", "filter_fn": crescent_extract},
                                         {"function": "take_first"}]}
    if name == "remove_whitespace":  # lm-eval nq_open's filter
        return {"name": name, "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}
    if name == "none":  # lm-eval's default: the first response as generated
        return {"name": name, "filter": [{"function": "take_first"}]}
    if name == "custom-regex":
        if not regex:
            raise ValueError("filter 'custom-regex' needs the benchmark's `regex` (its first group is the answer)")
        return _regex_filter(name, regex)
    raise ValueError(f"unknown filter {name!r}; allowed: {list(FILTERS)}")


def resolve_py(value: Any) -> Any:
    """'py:module.attr' strings (lm-eval's `!function`) become the object, from crescent.* or lm_eval.* only."""
    if isinstance(value, dict):
        return {k: resolve_py(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_py(v) for v in value]
    if not (isinstance(value, str) and value.startswith("py:")):
        return value
    dotted = value[3:]
    if not dotted.startswith(ALLOWED_PY):
        raise ValueError(f"{value!r}: only functions under {list(ALLOWED_PY)} may be referenced")
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _dataset(spec: Mapping[str, Any], base_dir: str, data_roots: Any = None, **_lm_eval_kwargs) -> Any:
    """lm-eval `custom_dataset`: the benchmark's docs as a DatasetDict: test, and train = the few-shot
    pool (the test docs themselves when there is none; build_task then sets fewshot_split=test, so that
    lm-eval's sampler never shows a doc its own answer)."""
    import datasets

    docs = load_docs(spec, base_dir, data_roots)
    test = datasets.Dataset.from_list(docs["test"])
    train = datasets.Dataset.from_list(docs["fewshot"]) if docs["fewshot"] else test
    return datasets.DatasetDict({"test": test, "train": train})


def _target(spec: Mapping[str, Any]) -> Any:
    if spec.get("target") is not None:
        return spec["target"]
    if spec.get("answer_field"):
        return "{{" + str(spec["answer_field"]) + "}}"
    raise ValueError("a benchmark needs `answer_field` (a field of each question) or `target` (a template)")


def build_task(name: str, spec: Mapping[str, Any], *, max_gen_toks: int, base_dir: str = ".",
               data_roots: Any = None) -> dict:
    """The lm-eval task config for one benchmark (a dict accepted by simple_evaluate's `tasks`). data_roots: the
    folders (besides base_dir) its files may be read from (eval.data_roots); None = no containment check."""
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"eval.benchmarks.{name}.kind={kind!r}; allowed: {list(KINDS)}")
    task: dict[str, Any] = {
        "task": name,
        "custom_dataset": partial(_dataset, dict(spec), str(base_dir), data_roots),
        "test_split": "test",
        "doc_to_text": resolve_py(spec["question_template"]),
        "doc_to_target": resolve_py(_target(spec)),
        "metadata": {"version": float(spec.get("version") or 1.0)},
        "training_split": "train",
        "fewshot_split": "train",
    }
    if spec.get("description"):
        task["description"] = spec["description"]
    sampler = spec.get("fewshot_sampler") or "default"
    fewshot_config: dict[str, Any] = {}
    if sampler != "default":
        fewshot_config["sampler"] = SAMPLERS[sampler]() if sampler in SAMPLERS else sampler
    if spec.get("fewshot_target"):  # exemplars show a worked answer, the gold stays the short answer
        fewshot_config["doc_to_target"] = resolve_py(spec["fewshot_target"])
    if fewshot_config:
        task["fewshot_config"] = fewshot_config
    if kind == "generate":
        task.update(
            output_type="generate_until",
            generation_kwargs={"until": list(spec.get("until") or []), "do_sample": False, "temperature": 0.0,
                               "max_gen_toks": int(max_gen_toks)},
            filter_list=[filter_entry(f, spec.get("regex")) for f in spec.get("filters") or ["flexible-extract"]],
            repeats=1,
        )
        task.update(_scoring(name, spec))
    else:
        task.update(
            output_type="multiple_choice",
            doc_to_choice=resolve_py(spec["choices"]),
            metric_list=[{"metric": m, "aggregation": "mean", "higher_is_better": True}
                         for m in spec.get("metrics") or ["acc"]],
        )
    task.update(resolve_py(dict(spec.get("lm_eval") or {})))
    if not load_docs(spec, base_dir, data_roots)["fewshot"]:
        # exemplars come from the test docs: name that split so lm-eval's sampler leaves out the doc itself
        task["fewshot_split"] = "test"
    if (task.get("fewshot_config") or {}).get("samples"):  # fixed exemplars (MATH's Minerva four): no split
        task.pop("fewshot_split", None)
        task.pop("training_split", None)
    return task


def metric_names(spec: Mapping[str, Any]) -> list[str]:
    """The benchmark's `metric` (a name or a list; default exact_match)."""
    metric = spec.get("metric") or ["exact_match"]
    return [metric] if isinstance(metric, str) else list(metric)


def _scoring(name: str, spec: Mapping[str, Any]) -> dict:
    """metric_list (and process_results) of a generation benchmark."""
    from crescent.eval import scoring

    metrics = metric_names(spec)
    if spec.get("process_results"):
        fn = resolve_py(spec["process_results"])
        if "metrics" in inspect.signature(fn).parameters:
            fn = partial(fn, metrics=tuple(metrics))
        return {"process_results": fn,
                "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics]}
    bad = [m for m in metrics if m not in GEN_METRICS]
    if bad:
        raise ValueError(f"eval.benchmarks.{name}.metric={metrics!r}: {bad} unknown; allowed: {list(GEN_METRICS)} "
                         "(or the names a benchmark's process_results returns)")
    out = []
    for m in metrics:
        if m == "exact_match":
            out.append({**EXACT_MATCH, **dict(spec.get("exact_match") or {})})
        else:
            out.append({"metric": scoring.math_equal, "aggregation": "mean", "higher_is_better": True})
    return {"metric_list": out}


def filter_names(task: Mapping[str, Any]) -> list[str]:
    """The filter names results are reported under ('none' for multiple-choice tasks)."""
    return [f["name"] for f in task.get("filter_list") or []] or ["none"]

