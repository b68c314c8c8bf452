"""One experiment-tracker run per Hydra job: W&B (offline unless logged in), CSV, or nothing."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def flatten(d: dict, prefix: str = "") -> dict[str, float]:
    """Nested dict -> {'a/b': number}; non-numbers are skipped."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def _wandb_mode(setting: str) -> str:
    if setting != "auto":
        return setting
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    logged_in = os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").exists()
    return "online" if logged_in else "offline"


def git_commit() -> str | None:
    """The commit of the crescent checkout that runs (None outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _hydra():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except (ImportError, ValueError):
        return None


def sweep_info() -> dict[str, Any]:
    """Where this job sits: experiment, hparams_search, and for multirun jobs the sweep id (the sweep
    dir's date/time), job number and overrides. Empty outside Hydra."""
    hc = _hydra()
    if hc is None:
        return {}
    from hydra.types import RunMode

    info: dict[str, Any] = {"experiment": hc.runtime.choices.get("experiment"),
                            "hparams_search": hc.runtime.choices.get("hparams_search"),
                            "overrides": list(hc.overrides.task)}
    if hc.mode == RunMode.MULTIRUN:
        info.update(sweep="-".join(Path(hc.sweep.dir).parts[-2:]), job_num=hc.job.num)
    return info


def wandb_group(info: dict[str, Any]) -> str | None:
    """experiment (or 'crescent'), plus the sweep id for multirun jobs: one W&B group per sweep."""
    if not info:
        return None
    base = info.get("experiment") or "crescent"
    return f"{base}/{info['sweep']}" if info.get("sweep") else info.get("experiment")


class Tracker:
    """The job's experiment-tracker run: the `none` logger (logs nothing), and the base of the others.

    conf/logger/<name>.yaml names its class in `_target_`; `build_tracker` builds it with hydra.utils.instantiate,
    the YAML's keys as settings. A tracker logs the stages' numbers (`log`), sample tables (`log_table`), and gives
    the train stage its Lightning logger (`lightning_logger`). Only global rank 0's is active (one W&B run per job,
    however many processes a launcher started); on the other ranks it logs nothing (kind "none")."""

    kind = "none"

    def __init__(self, cfg: DictConfig, run_dir: Path, meta: dict[str, Any] | None = None, active: bool = True,
                 **settings: Any):
        """meta: what the pipeline adds to the tracked config under `crescent` (e.g. synth_config_hash)."""
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.active = bool(active)
        if not self.active:
            self.kind = "none"
        self._run = None

    @property
    def run(self):
        """The active W&B run (None for the other loggers): Lightning's WandbLogger attaches to it."""
        return self._run

    def log(self, metrics: dict[str, Any]) -> None:
        pass

    def log_round(self, r: int, metrics: dict[str, Any]) -> None:
        """One round's metrics (rounds=R) on W&B's `round` axis: keys 'round/<key>' plotted against `round`, in the
        job's one run; the CSV logger writes them as 'round/<r>/<key>'."""

    def log_table(self, name: str, rows: list[dict], columns: list[str]) -> None:
        """A table of rows (e.g. sample SFT rows to read in the W&B UI); ignored by the loggers without tables."""

    def lightning_logger(self):
        """The Lightning logger of the train stage (False: none)."""
        return False

    def finish(self, ok: bool = True) -> None:
        pass


class CSVTracker(Tracker):
    """Metrics as key,value rows in <run dir>/metrics.csv; Lightning's CSVLogger under csv_logs/."""

    kind = "csv"

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["key", "value"])
            w.writerows(sorted(flatten(metrics).items()))

    def log_round(self, r: int, metrics: dict[str, Any]) -> None:
        self.log({f"round/{r}/{k}": v for k, v in flatten(metrics).items()})

    def lightning_logger(self):
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(self.run_dir), name="csv_logs", version="")


class WandbTracker(Tracker):
    """One W&B run per job (offline unless logged in), holding the resolved config, meta, commit and sweep info."""

    kind = "wandb"

    def __init__(self, cfg: DictConfig, run_dir: Path, meta: dict[str, Any] | None = None, active: bool = True,
                 **settings: Any):
        super().__init__(cfg, run_dir, meta, active, **settings)
        self._round_axis = False  # `round` defined as the step axis of round/* (log_round)
        if not self.active:
            return
        import wandb

        lc = settings
        info = sweep_info()
        config = OmegaConf.to_container(cfg, resolve=True)
        config["crescent"] = {**(meta or {}), "git_commit": git_commit(), **info}
        tags = list(cfg.get("tags", [])) + [v for v in (info.get("experiment"), info.get("hparams_search")) if v]
        self._run = wandb.init(
            project=lc.get("project"), entity=lc.get("entity"), group=lc.get("group") or wandb_group(info),
            job_type=lc.get("job_type") or "+".join(cfg.stages), tags=list(dict.fromkeys(tags)),
            dir=str(self.run_dir), mode=_wandb_mode(lc.get("mode", "auto")), config=config, reinit="finish_previous",
        )

    def log(self, metrics: dict[str, Any]) -> None:
        if self._run is not None:
            flat = flatten(metrics)
            self._run.log(flat)
            self._run.summary.update(flat)

    def log_round(self, r: int, metrics: dict[str, Any]) -> None:
        if self._run is None:
            return
        if not self._round_axis:
            self._run.define_metric("round")
            self._run.define_metric("round/*", step_metric="round")
            self._round_axis = True
        self._run.log({"round": r, **{f"round/{k}": v for k, v in flatten(metrics).items()}})

    def log_table(self, name: str, rows: list[dict], columns: list[str]) -> None:
        if self._run is not None and rows:
            import wandb

            self._run.log({name: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})

    def lightning_logger(self):
        if self._run is None:
            return False
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(experiment=self._run)

    def finish(self, ok: bool = True) -> None:
        if self._run is not None:
            self._run.finish(exit_code=0 if ok else 1)
            self._run = None


def build_tracker(cfg: DictConfig, run_dir: Path, meta: dict[str, Any] | None = None) -> Tracker:
    """The tracker of cfg.logger (its `_target_`, built by hydra.utils.instantiate), active on global rank 0 only
    (the others keep its Lightning logger, e.g. CSV, and log nothing themselves); no `_target_`: logs nothing."""
    from crescent.utils.dist import is_global_zero

    settings = OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") is not None else {}
    target = settings.pop("_target_", None)
    if not target:
        return Tracker(cfg, run_dir, meta)
    from hydra.utils import instantiate

    build = instantiate({"_target_": target, "_partial_": True})  # the run config stays out of OmegaConf's merge
    tracker = build(cfg, run_dir, meta, is_global_zero(), **settings)
    if not isinstance(tracker, Tracker):
        raise TypeError(f"logger._target_={target!r} built a {type(tracker).__name__}, not a "
                        "crescent.utils.tracking.Tracker")
    return tracker
