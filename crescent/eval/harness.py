"""lm-eval as a library: an in-memory model, one simple_evaluate call, results as flat rows."""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)


class _DropNotice(logging.Filter):
    """lm-eval warns on every task with a custom_dataset (how shipped data is fed): noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


logging.getLogger("lm_eval.api.task").addFilter(_DropNotice())


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


GENERATORS = ("hf", "fast", "auto")


def make_lm(model, tokenizer, batch_size: int, max_length: int, generator: str = "hf", fast_slots: int = 128,
            cache_dir=None):
    """An lm-eval model over an already loaded model (no copy). batch_size goes to HFLM itself: simple_evaluate's
    batch_size is ignored for LM instances. generator: hf = HFLM's generate; fast = crescent's continuous-batching
    backend for generate_until (Llama-family models on CPU); auto = fast where it runs, else hf."""
    from lm_eval.models.huggingface import HFLM

    if generator not in GENERATORS:
        raise ValueError(f"eval.generator={generator!r}; allowed: {list(GENERATORS)}")
    was_training = model.training
    backend = _fast_backend(model, tokenizer, generator, fast_slots, cache_dir) if generator != "hf" else None
    if backend is not None:
        from crescent.eval.fast_lm import FastLM

        lm = FastLM(backend, batch_size, max_length)
    else:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(batch_size), max_length=int(max_length))
    model.train(was_training)  # HFLM calls eval() on it; evaluate() switches and restores
    return lm


def _fast_backend(model, tokenizer, generator: str, slots: int, cache_dir):
    from crescent.backends.fast import FastBackend, check_supported

    on_cpu = next(model.parameters()).device.type == "cpu"
    try:
        check_supported(model)
    except ValueError as err:
        if generator == "fast":
            raise
        log.info("eval.generator=auto: %s", err)
        return None
    if not on_cpu:
        if generator == "fast":
            raise ValueError("eval.generator=fast runs on CPU only (eval.device=cpu); use hf on GPUs")
        return None
    return FastBackend(model, tokenizer, batch_size=slots, cache_dir=cache_dir)


def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False)  # ours are dict configs; skip indexing lm-eval's ~10k YAMLs


def evaluate(lm, tasks: Sequence[dict], num_fewshot: int, settings: Mapping[str, Any], limit: int | None) -> dict:
    """simple_evaluate on dict task configs; the model's train/eval mode is restored afterwards."""
    import lm_eval

    model = getattr(lm, "model", None)
    was_training = bool(getattr(model, "training", False))
    if model is not None:
        model.eval()
    try:
        return lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), num_fewshot=int(num_fewshot), limit=limit,
            task_manager=task_manager(), log_samples=True,
            bootstrap_iters=int(settings.get("bootstrap_iters", 1000)),
            apply_chat_template=bool(settings.get("apply_chat_template", False)),
            fewshot_as_multiturn=bool(settings.get("fewshot_as_multiturn", False)),
            system_instruction=settings.get("system_instruction"),
            random_seed=int(settings.get("random_seed", 0)),
            fewshot_random_seed=int(settings.get("fewshot_random_seed", 1234)),
        )
    finally:
        if model is not None:
            model.train(was_training)  # HFLM switches the model to eval() and leaves it there


def _number(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return None if math.isnan(float(v)) else float(v)
    return None


def result_rows(raw: Mapping[str, Any], model: str) -> list[dict]:
    """One row per (task, metric, filter): value, stderr (None when lm-eval gives 'N/A'), n, shots."""
    rows = []
    for task, metrics in raw["results"].items():
        n = raw.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or _number(value) is None:
                continue
            metric, filt = key.split(",", 1)
            rows.append({
                "model": model, "task": task, "num_fewshot": raw.get("n-shot", {}).get(task), "filter": filt,
                "metric": metric, "value": _number(value), "stderr": _number(metrics.get(f"{metric}_stderr,{filt}")),
                "n": n, "task_version": raw.get("versions", {}).get(task),
            })
    return rows


def _text(arguments: Any) -> str:
    """The prompt of a request: lm-eval stores (context, gen_kwargs) or (context, continuation)."""
    if isinstance(arguments, dict):  # newer lm-eval: {"gen_args_0": {"arg_0": ctx, ...}}
        first = next(iter(arguments.values()), {})
        return str(first.get("arg_0", "")) if isinstance(first, dict) else str(first)
    if isinstance(arguments, (list, tuple)) and arguments:
        first = arguments[0]
        return str(first[0] if isinstance(first, (list, tuple)) else first)
    return ""


def sample_rows(raw: Mapping[str, Any], task: str, model: str, num_fewshot: int) -> list[dict]:
    """The per-document record of one task: prompt, raw response, and per filter the extracted
    answer and its score (generation); or the scores (multiple choice)."""
    by_doc: dict[int, dict] = {}
    for s in raw.get("samples", {}).get(task, []):
        row = by_doc.setdefault(s["doc_id"], {
            "model": model, "task": task, "num_fewshot": num_fewshot, "doc_id": s["doc_id"],
            "target": str(s.get("target")), "prompt": _text(s.get("arguments")),
            "response": _first_response(s.get("resps")), "filters": {},
        })
        metrics = {k: _number(s[k]) for k in s.get("metrics", []) if k in s}
        row["filters"][s.get("filter", "none")] = {"extracted": _scalar(s.get("filtered_resps")), **metrics}
    return [by_doc[k] for k in sorted(by_doc)]


def _first_response(resps: Any) -> Any:
    while isinstance(resps, (list, tuple)) and len(resps) == 1:
        resps = resps[0]
    return resps if isinstance(resps, str) else None


def _scalar(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_scalar(x) for x in v] if len(v) != 1 else _scalar(v[0])
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
