"""A Lightning callback that scores the in-memory model with lm-eval every N epochs (small limit)."""
from __future__ import annotations

import logging
from typing import Any, Mapping

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class LmEvalCallback(L.Callback):
    """Logs eval_live/<task>/<filter or metric> at the end of every `every_n_epochs`-th epoch.

    Runs on global rank 0 on the live module (no copy); the model's train/eval mode is restored.
    Skipped under DeepSpeed ZeRO-3, whose sharded parameters are not a usable model: evaluate the
    exported hf_export/ with the eval stage instead.
    """

    def __init__(self, benchmarks: Mapping[str, dict], every_n_epochs: int, limit: int, num_fewshot: int,
                 settings: Mapping[str, Any], base_dir: str = "."):
        self.benchmarks, self.every, self.limit, self.shots = dict(benchmarks), int(every_n_epochs), limit, num_fewshot
        self.settings, self.base_dir = dict(settings), base_dir
        self.history: list[dict] = []  # one {epoch, step, metrics} per evaluation

    def _zero3(self, trainer) -> bool:
        return bool(getattr(trainer.strategy, "zero_stage_3", False))

    @torch.no_grad()
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every <= 0 or (trainer.current_epoch + 1) % self.every or not trainer.is_global_zero:
            return
        if self._zero3(trainer):
            log.warning("eval callback skipped: parameters are sharded under ZeRO-3 (the eval stage scores hf_export/)")
            return
        from crescent.eval import harness
        from crescent.eval.report import metric_dict
        from crescent.eval.tasks import build_task

        tasks = [build_task(n, s, max_gen_toks=int(self.settings.get("max_gen_toks", 256)), base_dir=self.base_dir,
                            data_roots=list(self.settings.get("data_roots") or []))
                 for n, s in self.benchmarks.items()]
        lm = harness.make_lm(pl_module.model, pl_module.tokenizer, int(self.settings.get("batch_size", 8)),
                             int(self.settings.get("max_length", 2048)))
        raw = harness.evaluate(lm, tasks, self.shots, self.settings, self.limit)  # restores train mode
        metrics = {f"eval_live/{k}": v for k, v in metric_dict(harness.result_rows(raw, "live")).items()}
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "metrics": metrics})
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
        log.info("eval callback (epoch %d): %s", trainer.current_epoch, metrics)


def eval_callbacks(cfg: DictConfig, base_dir: str = ".") -> list[L.Callback]:
    """[LmEvalCallback] on eval.callback.tasks when eval.callback.every_n_epochs > 0, else []."""
    ec = cfg.get("eval")
    if ec is None or int(ec.callback.every_n_epochs) <= 0:
        return []
    from crescent.config import ConfigError

    benchmarks = OmegaConf.to_container(ec.benchmarks, resolve=True)
    names = list(ec.callback.tasks or benchmarks)
    if not names or any(n not in benchmarks for n in names):
        raise ConfigError(f"eval.callback.tasks={names!r}: expected names from eval.benchmarks {sorted(benchmarks)}")
    return [LmEvalCallback({n: benchmarks[n] for n in names}, int(ec.callback.every_n_epochs),
                           int(ec.callback.limit), int(ec.callback.num_fewshot),
                           OmegaConf.to_container(ec, resolve=True), base_dir)]
