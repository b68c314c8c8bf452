"""Runs the selected stages for one Hydra job and records status.json."""
from __future__ import annotations

import errno
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from crescent.config import ConfigError, validate
from crescent.utils import dist
from crescent.utils.io import write_json
from crescent.utils.summary import print_summary
from crescent.utils.termination import Terminated, failure_fields, on_signals
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

# Which ranks run a stage when a launcher started several processes (crescent/utils/dist.py):
#   all     every rank takes part (training: Lightning's DDP / DeepSpeed; rank 0 alone writes its outputs)
#   shared  global rank 0 runs it; the other ranks wait for its result and read it (not data-parallel)
#   rank0   global rank 0 only; the other ranks skip it (export and lm-eval live on rank 0; lm-eval's
#           simple_evaluate returns None where LOCAL_RANK != 0)
# status.json, summaries and the W&B run belong to rank 0 whatever the stage.
STAGE_RANKS: dict[str, str] = {"generate": "shared", "train": "all", "eval": "rank0", "gap": "rank0"}


# Namespaces a stage's metrics already carry (Lightning logs the training module's 'train/loss', 'val/loss' under
# those names): such keys go to the tracker as they are, the others get '<stage>/' in front.
OWN_NAMESPACES: dict[str, tuple[str, ...]] = {"train": ("train", "val")}


def tracker_keys(stage: str, summary: dict) -> dict[str, float]:
    """A stage's summary as flat tracker keys: '<stage>/<key>', never '<stage>/<stage>/...' ('train/loss', not
    'train/train/loss'), and the same names the stage's own logger used during the stage."""
    from crescent.utils.tracking import flatten

    own = OWN_NAMESPACES.get(stage, (stage,))
    return {k if "/" in k and k.split("/", 1)[0] in own else f"{stage}/{k}": v for k, v in flatten(summary).items()}


class _Status:
    """status.json, written by global rank 0 only; counts its writes (recorded per rank, see dist.record_rank).

    A write never raises (it must not hide the error being recorded): when the atomic write fails (a full disk:
    its temp file cannot be filled), the file is overwritten in place with the minimal record (status, reason,
    error; truncating frees the old version's blocks first); when that fails too, one stderr line names the errno,
    the path and the status that could not be recorded."""

    MINIMAL = ("status", "reason", "signal", "errno", "error", "rounds", "stages", "done")

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "status.json"
        self.owner = dist.is_global_zero()
        self.writes = 0
        self.lost: str | None = None  # the stderr line of the last write that could not land

    def write(self, status: dict) -> None:
        if not self.owner:
            return
        try:
            write_json(self.path, status)
            self.writes += 1
            return
        except OSError as err:
            first = err
        minimal = {k: status[k] for k in self.MINIMAL if k in status}
        try:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(json.dumps(minimal, default=str) + "\n")
            self.writes += 1
            log.warning("%s: full write failed (%s); wrote the minimal record instead", self.path, first)
        except OSError as err:
            name = errno.errorcode.get(err.errno or first.errno or 0, "error")
            self.lost = (f"crescent: could not write {self.path} ({name}: {err.strerror or err}); the run's status "
                         f"is {status.get('status')!r}" + (f": {status['error']}" if status.get("error") else ""))
            print(self.lost, file=sys.stderr, flush=True)


def _run_stage(stage: str, cfg: DictConfig, tracker: Tracker) -> tuple[dict, str]:
    """(result, what this rank did: ran / waited / skipped) under the stage's STAGE_RANKS policy."""
    policy = STAGE_RANKS.get(stage, "rank0")
    if policy == "all" or dist.is_global_zero() and policy != "shared":
        return STAGE_FUNCS[stage](cfg, tracker), "ran"
    if policy == "shared":
        rank0 = dist.is_global_zero()
        result = dist.rank_zero_first(cfg.paths.output_dir, stage, lambda: STAGE_FUNCS[stage](cfg, tracker))
        return result, "ran" if rank0 else "waited"
    log.info("%s: %s runs on global rank 0 only", dist.rank_label(), stage)
    return {"skipped": f"runs on global rank 0 only (this is {dist.rank_label()})"}, "skipped"


def check_launch(cfg: DictConfig) -> None:
    """Launch shapes that cannot work, before anything loads: a Hydra sweep (-m) with several devices per job under
    Lightning's own launcher, which re-runs the whole command line (the sweep included) for every extra rank."""
    from omegaconf import ListConfig

    devices, accelerator = cfg.trainer.get("devices", 1), str(cfg.trainer.get("accelerator", "cpu"))
    if isinstance(devices, (list, tuple, ListConfig)):
        several = len(devices) > 1
    else:  # an int > 1, or -1 / "auto" (all visible GPUs; one process on CPU)
        several = str(devices) not in ("0", "1") and not (str(devices) in ("-1", "auto") and accelerator == "cpu")
    if not several or "train" not in cfg.stages or dist.launched_externally():
        return
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return
    if multirun:
        raise ConfigError(f"trainer.devices={devices} in a -m sweep: Lightning's launcher would re-run the whole sweep "
                          "for every extra rank. Run each job on its own allocation (hydra/launcher=slurm_8gpu, which "
                          "starts one task per GPU) or launch single jobs with torchrun / srun (docs/scale.md: Multi-GPU and "
                          "multi-node)")


def _run_rounds(cfg: DictConfig) -> dict:
    from crescent.rounds import run_rounds

    validate(cfg, hardware=True)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not dist.is_global_zero():  # take part in each round's training; the summaries are rank 0's
        from crescent.rounds import round_config

        return {"rounds": [run(round_config(cfg, r, run_dir)) for r in range(int(cfg.rounds))]}
    from crescent.rounds import round_axis_metrics

    status_file = _Status(run_dir)
    status = {"status": "running", "rounds": int(cfg.rounds), "started": time.time()}
    status_file.write(status)
    tracker = Tracker(cfg, run_dir)  # one W&B run for the job: every round logs into it, `round` its step axis
    try:
        with on_signals():
            result = run_rounds(cfg, lambda rcfg: run(rcfg, tracker=tracker),
                                on_round=lambda s: tracker.log_round(int(s["round"]), round_axis_metrics(s)))
    except BaseException as e:
        status.update(status="failed", **failure_fields(e), traceback=traceback.format_exc())
        status_file.write(status)
        tracker.finish(ok=False)
        raise
    tracker.finish(ok=True)
    status_file.write({**status, "status": "ok", "finished": time.time()})
    log.info("rounds summary: %s", run_dir / "rounds" / "summary.md")
    return {"rounds": result}


def check_objective(cfg: DictConfig) -> str | None:
    """cfg.optimized_metric as the eval stage will name it for this config's benchmarks and shot counts
    ('eval/gsm8k_0shot/...' is 'eval/gsm8k/...' when 0 is the only shot count); raises ConfigError before anything
    runs when the name cannot match (a bare task with several shot counts, an unknown task or shot count)."""
    name = cfg.get("optimized_metric")
    if not name or not str(name).startswith("eval/"):
        return name
    from crescent.eval.report import resolve_metric_name
    from crescent.eval.stage import selected_benchmarks, shot_plan

    shots: dict[str, list[int]] = {}
    for k, unit in shot_plan(selected_benchmarks(cfg.eval), cfg.eval.num_fewshot).items():
        for task in unit:
            shots.setdefault(task, []).append(k)
    try:
        return "eval/" + resolve_metric_name(str(name)[len("eval/"):], shots)
    except ValueError as e:
        raise ConfigError(f"optimized_metric={name!r} cannot match what eval produces: {e} (eval.num_fewshot="
                          f"{OmegaConf.to_container(cfg.eval.num_fewshot) if OmegaConf.is_config(cfg.eval.num_fewshot) else cfg.eval.num_fewshot})") from None


def objective(cfg: DictConfig, results: dict) -> float | None:
    """The value of cfg.optimized_metric ('<stage>/<metric>', e.g. 'eval/gsm8k/flexible-extract'), which
    the Optuna sweeper maximises or minimises; None when no metric is named."""
    name = cfg.get("optimized_metric")
    if not name or not dist.is_global_zero():  # the metrics are rank 0's
        return None
    from crescent.utils.tracking import flatten

    name = check_objective(cfg)
    stage, _, key = str(name).partition("/")
    metrics = flatten(results.get(stage, {}).get("metrics") or results.get(stage, {}).get("counts") or {})
    if key not in metrics:
        raise ConfigError(f"optimized_metric={name!r} was not produced by this run; available: "
                          f"{sorted(f'{stage}/{k}' for k in metrics)}")
    return float(metrics[key])


def run(cfg: DictConfig, tracker: Tracker | None = None) -> dict:
    """Validate, then run cfg.stages in order (cfg.rounds times when > 1, see crescent.rounds).
    Returns {stage: result}. Raises on failure after writing status.json = failed with the traceback.

    Rank-aware (see STAGE_RANKS and crescent/utils/dist.py): under Lightning's launcher, torchrun or srun every rank
    runs this; only global rank 0 writes status.json, summaries and the W&B run. tracker: an open tracker to log
    into (the rounds loop's one run per job); by default the job opens and finishes its own."""
    if int(cfg.get("rounds", 1) or 1) > 1:
        return _run_rounds(cfg)
    with on_signals():  # SIGTERM / SIGINT: status.json says failed, reason terminated (crescent/utils/termination.py)
        return _run(cfg, tracker)


def _run(cfg: DictConfig, tracker: Tracker | None) -> dict:
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    status_file = _Status(run_dir)
    try:
        validate(cfg, hardware=True)  # before anything heavy is imported or loaded (and this machine can run it)
        check_launch(cfg)
        check_objective(cfg)  # a sweep's metric name that cannot match fails now, not after the whole trial
    except ConfigError as e:  # recorded, so sweep aggregation lists the job with its error
        status_file.write({"status": "failed", "error": f"ConfigError: {e}", "stages": []})
        raise
    except Terminated as e:
        status_file.write({"status": "failed", **failure_fields(e), "stages": []})
        raise
    from crescent.utils.io import ensure_writable

    ensure_writable(run_dir, "paths.output_dir")
    if "generate" in cfg.stages and cfg.get("cache_synth", True):
        ensure_writable(cfg.paths.synth_cache, "paths.synth_cache")
    previous_launch = dist.export_launch_id()  # the ranks Lightning's launcher starts in trainer.fit inherit it
    record: dict = {"stages": {}, "status": "running"}
    try:
        return _run_stages(cfg, run_dir, status_file, record, tracker)
    except BaseException as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}")
        if status_file.lost:
            e.add_note(status_file.lost)
        raise
    finally:
        record["status_writes"] = status_file.writes
        try:
            dist.record_rank(run_dir, record)
        except OSError:
            log.exception("could not record what %s did", dist.rank_label())
        dist.restore_launch_id(previous_launch)


def _run_stages(cfg: DictConfig, run_dir: Path, status_file: _Status, record: dict,
                borrowed: Tracker | None = None) -> dict:
    status = {"status": "running", "stages": list(cfg.stages), "done": [], "started": time.time()}
    status_file.write(status)
    if cfg.get("print_config", False) and dist.is_global_zero():
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    tracker = borrowed or Tracker(cfg, run_dir)  # inert on ranks > 0
    results: dict[str, dict] = {}
    try:
        for stage in cfg.stages:
            t0 = time.perf_counter()
            results[stage], record["stages"][stage] = _run_stage(stage, cfg, tracker)
            summary = results[stage].get("counts") or results[stage].get("metrics") or {}
            tracker.log({**tracker_keys(stage, summary), f"{stage}_wall_s": time.perf_counter() - t0})
            status["done"].append(stage)
            status_file.write(status)
    except BaseException as e:
        status.update(status="failed", **failure_fields(e), traceback=traceback.format_exc())
        status_file.write(status)
        if borrowed is None:
            tracker.finish(ok=False)
        raise
    status.update(status="ok", finished=time.time())
    status_file.write(status)
    if borrowed is None:
        tracker.finish(ok=True)
    record["status"] = "ok"
    if dist.is_global_zero():
        print_summary(cfg, results, run_dir)
        codes = dist.wait_for_children()  # ranks Lightning's launcher started: they end after training
        if any(codes):
            log.warning("rank processes started by Lightning's launcher exited with %s", codes)
    return results
