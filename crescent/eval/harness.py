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
ENGINES = ("hf", "vllm")  # eval.engine: crescent.config.EVAL_ENGINES
# eval.vllm.* keys that go to lm-eval's VLLM model (and from there to vllm.LLM) under the same name
VLLM_ARGS = ("tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization", "max_model_len", "dtype", "seed",
             "batch_size", "enforce_eager")


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


def make_vllm_lm(model_dir: str, vllm_cfg: Mapping[str, Any], max_gen_toks: int, chat_template: str | None = None,
                 trust_remote_code: bool = False):
    """lm-eval's own `vllm` model type on a model folder (the base model's, or this run's hf_export/).
    eval.vllm.* goes to it by name: tensor/data parallel sizes (lm-eval runs data_parallel_size > 1 as that many
    Ray actors, each one vllm.LLM over its share of the requests), memory, context length, dtype, seed, batching."""
    args = {k: vllm_cfg[k] for k in VLLM_ARGS if vllm_cfg.get(k) is not None}
    for key in ("tensor_parallel_size", "data_parallel_size", "max_model_len", "seed"):
        if key in args:
            args[key] = int(args[key])
    if "batch_size" in args and str(args["batch_size"]) != "auto":
        args["batch_size"] = int(args["batch_size"])
    if "gpu_memory_utilization" in args:
        args["gpu_memory_utilization"] = float(args["gpu_memory_utilization"])
    _check_vllm(int(args.get("data_parallel_size", 1)))
    from lm_eval.models.vllm_causallms import VLLM

    lm = VLLM(pretrained=str(model_dir), max_gen_toks=int(max_gen_toks), trust_remote_code=bool(trust_remote_code),
              **args)
    if chat_template:  # the model config's override, as crescent.models.loading gives the hf tokenizer
        lm.hf_chat_template = chat_template
    return lm


def _check_vllm(data_parallel_size: int) -> None:
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        raise ImportError("eval.engine=vllm needs the `vllm` package (pip install -e .[gpu] on a CUDA machine); "
                          "or use eval.engine=hf")
    if data_parallel_size > 1 and find_spec("ray") is None:
        raise ImportError(f"eval.vllm.data_parallel_size={data_parallel_size} needs `ray` (pip install ray): lm-eval "
                          "runs its data-parallel replicas as Ray actors; or set eval.vllm.data_parallel_size=1")


def release(lm) -> None:
    """Shut down a vLLM engine (lm-eval's VLLM at data_parallel_size=1 holds one; Ray replicas end with each call)
    and return its GPU memory before the next model is loaded."""
    import gc

    engine = getattr(getattr(getattr(lm, "model", None), "llm_engine", None), "engine_core", None)
    if engine is not None and hasattr(engine, "shutdown"):
        engine.shutdown()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False)  # ours are dict configs; skip indexing lm-eval's ~10k YAMLs


def evaluate(lm, tasks: Sequence[dict], num_fewshot: int, settings: Mapping[str, Any], limit: int | None) -> dict:
    """simple_evaluate on dict task configs; the model's train/eval mode is restored afterwards. Every template
    lm-eval renders meanwhile renders in Jinja's sandbox (crescent.utils.templates.lm_eval_sandbox)."""
    import lm_eval

    from crescent.utils.templates import lm_eval_sandbox

    model = getattr(lm, "model", None)
    if not hasattr(model, "train"):  # lm-eval's VLLM: model is a vllm.LLM, no train/eval modes
        model = None
    was_training = bool(getattr(model, "training", False))
    if model is not None:
        model.eval()
    try:
        with lm_eval_sandbox():
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
