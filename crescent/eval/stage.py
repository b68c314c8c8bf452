"""The eval stage: lm-eval scores of the base model and of this run's hf_export/, before vs after.

Writes eval/results.json (one row per model x task x shots x filter/metric, with stderr and n, plus the
lm-eval version and prompt settings), eval/samples_<model>_<task>_<k>shot.jsonl, eval/summary.md and
eval/summary.png. Each (model, shots) unit is saved under eval/parts/ as it finishes, so an interrupted
eval resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from crescent.config import ConfigError
from crescent.utils.io import read_json, write_json, write_jsonl

log = logging.getLogger(__name__)
# settings that change scores (recorded in results.json, part of each unit's cache key)
SETTINGS = ("limit", "apply_chat_template", "fewshot_as_multiturn", "system_instruction", "max_gen_toks",
            "max_length", "dtype", "bootstrap_iters", "random_seed", "fewshot_random_seed", "generator")


def shots_list(value: Any) -> list[int]:
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value)
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def shot_plan(benchmarks: dict[str, dict], default: Any) -> dict[int, dict[str, dict]]:
    """{shots: {name: spec}}: each benchmark at its own `num_fewshot` (when set) or eval.num_fewshot."""
    plan: dict[int, dict[str, dict]] = {}
    for name, spec in benchmarks.items():
        own = spec.get("num_fewshot")
        for k in shots_list(default if own is None else own):
            plan.setdefault(k, {})[name] = spec
    return dict(sorted(plan.items()))


def selected_benchmarks(eval_cfg: DictConfig) -> dict[str, dict]:
    """{name: benchmark config} of eval.benchmarks, narrowed to eval.tasks when given."""
    benchmarks = OmegaConf.to_container(eval_cfg.benchmarks, resolve=True) or {}
    names = list(eval_cfg.tasks) if eval_cfg.get("tasks") else list(benchmarks)
    unknown = [n for n in names if n not in benchmarks]
    if unknown or not names:
        raise ConfigError(f"eval.tasks={names!r}: {unknown or 'none'} not in eval.benchmarks "
                          f"(available: {sorted(benchmarks)}); add one with +eval/benchmark@eval.benchmarks.NAME=NAME")
    return {n: benchmarks[n] for n in names}


def export_dir(cfg: DictConfig) -> Path:
    return Path(cfg.eval.trained_path or Path(cfg.paths.output_dir) / "hf_export")


def models_to_score(cfg: DictConfig) -> dict[str, dict]:
    """{'base': model config, 'trained': model config of the export} as eval.models asks and exists."""
    wanted = list(cfg.eval.models)
    out = {}
    if "base" in wanted:
        out["base"] = OmegaConf.to_container(cfg.student, resolve=True)
    if "trained" in wanted:
        path = export_dir(cfg)
        if (path / "config.json").is_file():
            out["trained"] = {"name": f"{cfg.student.name}+trained", "source": "hub", "hf_id": None,
                              "local_path": str(path), "trust_remote_code": False, "revision": None,
                              "chat_template": cfg.student.get("chat_template")}
        elif cfg.eval.trained_path or wanted == ["trained"]:
            raise ConfigError(f"eval.models includes 'trained' but {path} holds no exported model "
                              "(run stages=[...,train,eval] or set eval.trained_path)")
        else:
            log.info("eval: no %s yet, scoring the base model only", path)
    if not out:
        raise ConfigError(f"eval.models={wanted!r}: expected a non-empty list drawn from ['base', 'trained']")
    return out


def _weights_stamp(model_cfg: dict, cache_dir: str | Path) -> list:
    """(name, sha256) of a local model's weight files: a re-export of equal weights keeps its eval parts."""
    from crescent.models.embedded import file_sha256

    if not model_cfg.get("local_path"):
        return []
    return sorted((p.name, file_sha256(p, cache_dir)) for p in Path(model_cfg["local_path"]).glob("*.safetensors"))


def chat_at(ec: DictConfig, shots: int) -> bool:
    """Whether prompts at this shot count are rendered with the chat template (eval.apply_chat_template, narrowed
    to the shot counts of eval.chat_template_shots when set)."""
    only = ec.get("chat_template_shots")
    return bool(ec.apply_chat_template) and (only is None or shots in shots_list(only))


def unit_settings(settings: dict, ec: DictConfig, shots: int) -> dict:
    """The settings one shot count is scored with (its unit key): the chat template as chat_at says."""
    return {**settings, "apply_chat_template": chat_at(ec, shots)}


def unit_key(settings: dict, benchmarks: dict, model_cfg: dict, shots: int, cache_dir: str | Path) -> str:
    blob = json.dumps([settings, benchmarks, model_cfg, _weights_stamp(model_cfg, cache_dir), shots],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _score_unit(lm, tag: str, benchmarks: dict, shots: int, cfg: DictConfig, base_dir: str) -> tuple[dict, dict]:
    from crescent.eval import harness, scoring
    from crescent.eval.tasks import build_task

    ec = cfg.eval
    roots = list(ec.get("data_roots") or [])
    tasks = [build_task(n, spec, max_gen_toks=int(ec.max_gen_toks), base_dir=base_dir, data_roots=roots)
             for n, spec in benchmarks.items()]
    raw = harness.evaluate(lm, tasks, shots, {**OmegaConf.to_container(ec, resolve=True),
                                              "apply_chat_template": chat_at(ec, shots)}, ec.limit)
    scoring.warn_exact_misses(raw)  # exact match 0 but answers equal the gold in value: say why
    return raw, {n: harness.sample_rows(raw, n, tag, shots) for n in benchmarks}


def _launch_dir() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.cwd
    except ValueError:
        return str(Path.cwd())


def run(cfg: DictConfig, tracker=None) -> dict:
    from crescent.eval import harness, report
    from crescent.utils import dist

    if not dist.is_global_zero():  # lm-eval's simple_evaluate returns None where LOCAL_RANK != 0
        raise RuntimeError(f"the eval stage runs on global rank 0 only, not on {dist.rank_label()} "
                           "(crescent.pipeline skips it on the other ranks)")
    t0 = time.perf_counter()
    ec = cfg.eval
    out = Path(cfg.paths.output_dir) / "eval"
    benchmarks = selected_benchmarks(ec)
    models = models_to_score(cfg)
    settings = {k: ec.get(k) for k in SETTINGS}
    engine = ec.get("engine") or "hf"
    if engine != "hf":  # hf runs keep their unit keys; another engine scores as new units
        settings.update(engine=engine, vllm=OmegaConf.to_container(ec.vllm, resolve=True))
    rows: list[dict] = []
    samples_written = []
    for tag, model_cfg in models.items():
        lm = None
        for shots, unit in shot_plan(benchmarks, ec.num_fewshot).items():
            key = unit_key(unit_settings(settings, ec, shots), unit, model_cfg, shots, cfg.paths.cache_dir)
            part = out / "parts" / f"{tag}_{shots}shot.json"
            if part.is_file() and read_json(part).get("key") == key:
                log.info("eval: %s %d-shot already scored (%s)", tag, shots, part)
                rows += read_json(part)["rows"]
                continue
            if lm is None:
                lm = _load_lm(model_cfg, cfg)
            log.info("eval: scoring %s (%s) %d-shot on %s", tag, model_cfg["name"], shots, ", ".join(unit))
            raw, samples = _score_unit(lm, tag, unit, shots, cfg, _launch_dir())
            unit_rows = harness.result_rows(raw, tag)
            for task, task_samples in samples.items():
                path = out / f"samples_{tag}_{task}_{shots}shot.jsonl"
                if ec.log_samples:
                    write_jsonl(path, task_samples)
                    samples_written.append(path)
            write_json(part, {"key": key, "rows": unit_rows})
            rows += unit_rows
        if lm is not None and engine == "vllm":
            harness.release(lm)  # the engine's GPU memory back before the next model's engine
        del lm
    result = {
        "lm_eval_version": harness.lm_eval_version(),
        "settings": {"engine": engine, **settings, "num_fewshot": list(shot_plan(benchmarks, ec.num_fewshot)),
                     "chat_template_at": [k for k in shot_plan(benchmarks, ec.num_fewshot) if chat_at(ec, k)],
                     "batch_size": ec.batch_size},
        "models": {tag: {"name": m["name"], "path": m.get("local_path")} for tag, m in models.items()},
        "benchmarks": benchmarks,
        "rows": rows,
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    write_json(out / "results.json", result)
    table = report.write_summary(result, out)
    metrics = report.metric_dict(rows)
    if tracker is not None:
        _log_samples(tracker, samples_written)
    return {"metrics": metrics, "results": str(out / "results.json"), "summary": table,
            "wall_s": result["wall_s"], "models": list(models)}


def _load_lm(model_cfg: dict, cfg: DictConfig):
    from crescent.eval.harness import make_lm, make_vllm_lm
    from crescent.models.loading import load_model_and_tokenizer, resolve_model_dir

    if (cfg.eval.get("engine") or "hf") == "vllm":  # lm-eval's vllm model on the model's folder
        return make_vllm_lm(resolve_model_dir(model_cfg, cfg.paths.cache_dir),
                            OmegaConf.to_container(cfg.eval.vllm, resolve=True), cfg.eval.max_gen_toks,
                            chat_template=model_cfg.get("chat_template"),
                            trust_remote_code=bool(model_cfg.get("trust_remote_code") or False))
    tok, model = load_model_and_tokenizer(model_cfg, cfg.paths.cache_dir, dtype=cfg.eval.dtype, device=cfg.eval.device)
    return make_lm(model, tok, cfg.eval.batch_size, cfg.eval.max_length, generator=cfg.eval.get("generator", "hf"),
                   fast_slots=int(cfg.eval.get("fast_slots", 128)), cache_dir=cfg.paths.cache_dir)


def _log_samples(tracker, paths: list[Path], per_file: int = 50) -> None:
    from crescent.utils.io import read_jsonl

    rows = []
    for path in paths:
        for s in list(read_jsonl(path))[:per_file]:
            scores = {f: {k: v for k, v in d.items() if k != "extracted"} for f, d in s["filters"].items()}
            extracted = {f: d.get("extracted") for f, d in s["filters"].items()}
            rows.append({**s, "filters": json.dumps(scores), "extracted": json.dumps(extracted)[:500]})
    tracker.log_table("eval/samples", rows, ["model", "task", "num_fewshot", "doc_id", "prompt", "response",
                                             "target", "extracted", "filters"])
