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
    """The job's experiment-tracker run. Only global rank 0 owns one (one W&B run per job, however many processes a
    launcher started); on the other ranks the tracker is inert."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        from crescent.utils.dist import is_global_zero

        self.kind = cfg.logger.name if is_global_zero() else "none"
        self.run_dir = Path(run_dir)
        self._run = None
        self._round_axis = False
        if self.kind == "wandb":
            import wandb

            from crescent.config import config_hash

            lc = cfg.logger
            info = sweep_info()
            config = OmegaConf.to_container(cfg, resolve=True)
            config["crescent"] = {"synth_config_hash": config_hash(cfg), "git_commit": git_commit(), **info}
            tags = list(cfg.get("tags", [])) + [v for v in (info.get("experiment"), info.get("hparams_search")) if v]
            self._run = wandb.init(
                project=lc.project, entity=lc.entity, group=lc.group or wandb_group(info),
                job_type=lc.job_type or "+".join(cfg.stages), tags=list(dict.fromkeys(tags)),
                dir=str(self.run_dir), mode=_wandb_mode(lc.mode), config=config, reinit="finish_previous",
            )

    @property
    def run(self):
        """The active W&B run (None for the other loggers): Lightning's WandbLogger attaches to it."""
        return self._run

    def log(self, metrics: dict[str, Any]) -> None:
        flat = flatten(metrics)
        if self.kind == "wandb" and self._run is not None:
            self._run.log(flat)
            self._run.summary.update(flat)
        elif self.kind == "csv":
            path = self.run_dir / "metrics.csv"
            new = not path.exists()
            with open(path, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["key", "value"])
                w.writerows(sorted(flat.items()))

    def log_round(self, r: int, metrics: dict[str, Any]) -> None:
        """One round's metrics (rounds=R) on W&B's `round` axis: keys 'round/<key>' plotted against `round`, in the
        job's one run; the CSV logger writes them as 'round/<r>/<key>'."""
        flat = flatten(metrics)
        if self.kind == "wandb" and self._run is not None:
            if not self._round_axis:
                self._run.define_metric("round")
                self._run.define_metric("round/*", step_metric="round")
                self._round_axis = True
            self._run.log({"round": r, **{f"round/{k}": v for k, v in flat.items()}})
        elif self.kind == "csv":
            self.log({f"round/{r}/{k}": v for k, v in flat.items()})

    def log_table(self, name: str, rows: list[dict], columns: list[str]) -> None:
        """A W&B table (e.g. sample SFT rows to read in the UI); ignored by the other loggers."""
        if self.kind == "wandb" and self._run is not None and rows:
            import wandb

            self._run.log({name: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})

    def finish(self, ok: bool = True) -> None:
        if self._run is not None:
            self._run.finish(exit_code=0 if ok else 1)
            self._run = None
