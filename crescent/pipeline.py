"""Runs the selected stages for one Hydra job and records status.json."""
from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from crescent.config import ConfigError, validate
from crescent.utils.io import write_json
from crescent.utils.summary import print_summary
from crescent.utils.tracking import Tracker

log = logging.getLogger(__name__)


def _generate(cfg: DictConfig, tracker: Tracker) -> dict:
    from crescent.synth.generate import run
    from crescent.utils.io import read_jsonl

    manifest = run(cfg)
    rows = list(read_jsonl(Path(cfg.paths.output_dir) / "synth" / "sft.jsonl"))[:200]
    for r in rows:
        r["response"] = r["messages"][-1]["content"]
    tracker.log_table("synth/sft_samples", rows, ["id", "question", "response", "answer", "agreement"])
    return manifest


def _train(cfg: DictConfig, tracker: Tracker) -> dict:
    from crescent.train.stage import run

    return run(cfg, tracker)


def _eval(cfg: DictConfig, tracker: Tracker) -> dict:
    from crescent.eval.stage import run

    return run(cfg, tracker)


def _gap(cfg: DictConfig, tracker: Tracker) -> dict:
    from crescent.gap.stage import run

    return run(cfg, tracker)


STAGE_FUNCS: dict[str, Callable[[DictConfig, Tracker], dict]] = {"generate": _generate, "train": _train, "eval": _eval, "gap": _gap}


def _run_rounds(cfg: DictConfig) -> dict:
    from crescent.rounds import run_rounds

    validate(cfg, hardware=True)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    status = {"status": "running", "rounds": int(cfg.rounds), "started": time.time()}
    write_json(run_dir / "status.json", status)
    try:
        result = run_rounds(cfg, run)
    except BaseException as e:
        status.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        write_json(run_dir / "status.json", status)
        raise
    write_json(run_dir / "status.json", {**status, "status": "ok", "finished": time.time()})
    log.info("rounds summary: %s", run_dir / "rounds" / "summary.md")
    return {"rounds": result}


def objective(cfg: DictConfig, results: dict) -> float | None:
    """The value of cfg.optimized_metric ('<stage>/<metric>', e.g. 'eval/gsm8k/flexible-extract'), which
    the Optuna sweeper maximises or minimises; None when no metric is named."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    from crescent.utils.tracking import flatten

    stage, _, key = str(name).partition("/")
    metrics = flatten(results.get(stage, {}).get("metrics") or results.get(stage, {}).get("counts") or {})
    if key not in metrics:
        raise ConfigError(f"optimized_metric={name!r} was not produced by this run; available: "
                          f"{sorted(f'{stage}/{k}' for k in metrics)}")
    return float(metrics[key])


def run(cfg: DictConfig) -> dict:
    """Validate, then run cfg.stages in order (cfg.rounds times when > 1, see crescent.rounds).
    Returns {stage: result}. Raises on failure after writing status.json = failed with the traceback."""
    if int(cfg.get("rounds", 1) or 1) > 1:
        return _run_rounds(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        validate(cfg, hardware=True)  # before anything heavy is imported or loaded (and this machine can run it)
    except ConfigError as e:  # recorded, so sweep aggregation lists the job with its error
        write_json(run_dir / "status.json", {"status": "failed", "error": f"ConfigError: {e}", "stages": []})
        raise
    from crescent.utils.io import ensure_writable

    ensure_writable(run_dir, "paths.output_dir")
    if "generate" in cfg.stages and cfg.get("cache_synth", True):
        ensure_writable(cfg.paths.synth_cache, "paths.synth_cache")
    status = {"status": "running", "stages": list(cfg.stages), "done": [], "started": time.time()}
    write_json(run_dir / "status.json", status)
    if cfg.get("print_config", False):
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    tracker = Tracker(cfg, run_dir)
    results: dict[str, dict] = {}
    try:
        for stage in cfg.stages:
            t0 = time.perf_counter()
            results[stage] = STAGE_FUNCS[stage](cfg, tracker)
            summary = results[stage].get("counts") or results[stage].get("metrics") or {}
            tracker.log({stage: summary, f"{stage}_wall_s": time.perf_counter() - t0})
            status["done"].append(stage)
            write_json(run_dir / "status.json", status)
    except BaseException as e:
        status.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        write_json(run_dir / "status.json", status)
        tracker.finish(ok=False)
        raise
    status.update(status="ok", finished=time.time())
    write_json(run_dir / "status.json", status)
    tracker.finish(ok=True)
    print_summary(cfg, results, run_dir)
    return results
