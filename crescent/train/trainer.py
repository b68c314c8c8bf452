"""The Lightning Trainer for the train stage, built from cfg.trainer and cfg.train.

- batch_plan: micro-batch / accumulation so that train.global_batch_size holds for any device count.
- deepspeed_config: the DeepSpeed JSON config, built from trainer.deepspeed (no hand-written JSON).
- build_trainer: the Trainer with checkpoints/last.ckpt after every epoch; resume_checkpoint finds it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from crescent.config import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "deepspeed")
ZERO_STAGES = (0, 1, 2, 3)
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


class BatchPlan(NamedTuple):
    micro_batch_size: int  # sequences per device per forward
    accumulate: int  # micro-batches per optimizer step
    world_size: int  # processes: devices x nodes
    global_batch_size: int  # = micro_batch_size * accumulate * world_size


def resolve_devices(devices: Any, accelerator: str = "gpu") -> int:
    """Processes per node: an int, a device list, or -1/"auto" (all visible GPUs; 1 on CPU)."""
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices)
    if devices in (-1, "-1", "auto"):
        if accelerator == "cpu":
            return 1
        count = torch.cuda.device_count()
        return count if accelerator in ("gpu", "cuda") else max(count, 1)  # "auto": CPU when no GPU
    return int(devices)


def batch_plan(global_batch_size: int, micro_batch_size: int, devices: Any, num_nodes: int = 1,
               accelerator: str = "gpu") -> BatchPlan:
    """accumulate = global / (micro x world); micro shrinks to a divisor of global / world if needed."""
    world = resolve_devices(devices, accelerator) * int(num_nodes)
    total, micro = int(global_batch_size), int(micro_batch_size)
    values = (f"train.global_batch_size={global_batch_size}, train.micro_batch_size={micro_batch_size}, "
              f"trainer.devices={devices}, trainer.num_nodes={num_nodes}")
    if world < 1:
        raise ConfigError(f"trainer.devices={devices!r} gives no device (trainer.accelerator={accelerator}, "
                          f"{torch.cuda.device_count()} GPUs visible)")
    if total < 1 or micro < 1:
        raise ConfigError(f"batch sizes must be >= 1: {values}")
    if total % world:
        raise ConfigError(f"train.global_batch_size must be a multiple of the {world} processes "
                          f"(trainer.devices x trainer.num_nodes): {values}")
    per_rank = total // world
    fitted = max(d for d in range(1, min(micro, per_rank) + 1) if per_rank % d == 0)
    if fitted != micro:
        log.warning("train.micro_batch_size=%d does not divide the %d sequences per process (%s): using %d",
                    micro, per_rank, values, fitted)
    return BatchPlan(fitted, per_rank // fitted, world, total)


def _precision_flags(precision: Any) -> tuple[bool, bool]:
    """(bf16, fp16) for a Lightning precision string."""
    p = str(precision)
    return p.startswith("bf16"), p in ("16", "16-mixed", "16-true")


def needs_deepspeed_cpu_adam(trainer_cfg: DictConfig) -> bool:
    """True when DeepSpeed offloads the optimizer to CPU.

    DeepSpeed then refuses a torch optimizer ("ZeRO-Offload with a client provided optimizer"), so the
    LightningModule must create deepspeed.ops.adam.DeepSpeedCPUAdam (same AdamW maths, adamw_mode=True)."""
    ds = trainer_cfg.get("deepspeed")
    return trainer_cfg.strategy == "deepspeed" and ds is not None and bool(ds.offload_optimizer)


def deepspeed_config(trainer_cfg: DictConfig, train_cfg: DictConfig, plan: BatchPlan) -> dict:
    """The DeepSpeed JSON config from trainer.deepspeed, trainer.precision, train.gradient_clip and plan."""
    ds = trainer_cfg.get("deepspeed")
    if ds is None:
        raise ConfigError("trainer.deepspeed is null but trainer.strategy=deepspeed: "
                          "use trainer=deepspeed_stage_2, deepspeed_stage_3 or deepspeed_stage_3_offload")
    stage = int(ds.stage)
    if stage not in ZERO_STAGES:
        raise ConfigError(f"trainer.deepspeed.stage={ds.stage!r}: allowed {list(ZERO_STAGES)}")
    offload_optimizer, offload_params = bool(ds.offload_optimizer), bool(ds.offload_parameters)
    if offload_params and stage != 3:
        raise ConfigError(f"trainer.deepspeed.offload_parameters=true needs trainer.deepspeed.stage=3 (got {stage})")
    if offload_optimizer and stage == 0:
        raise ConfigError("trainer.deepspeed.offload_optimizer=true needs trainer.deepspeed.stage >= 1 (got 0)")
    optimizer = OmegaConf.select(train_cfg, "optimizer.name", default="adamw")
    if offload_optimizer and optimizer != "adamw":
        raise ConfigError(f"trainer.deepspeed.offload_optimizer=true needs train.optimizer.name=adamw "
                          f"(DeepSpeedCPUAdam); got {optimizer!r}")
    pin_memory = bool(ds.get("pin_memory", True))
    zero: dict[str, Any] = {
        "stage": stage,
        "contiguous_gradients": bool(ds.contiguous_gradients),
        "overlap_comm": bool(ds.overlap_comm),
        "allgather_bucket_size": int(ds.allgather_bucket_size),
        "reduce_bucket_size": int(ds.reduce_bucket_size),
    }
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    if stage == 3:  # full 16-bit weights on save, so hf_export/ can be written from the shards
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    bf16, fp16 = _precision_flags(trainer_cfg.precision)
    return {
        "train_batch_size": plan.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.accumulate,
        "gradient_clipping": float(train_cfg.gradient_clip or 0.0),  # 0 = no clipping
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": fp16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # train.optimizer.name=sgd is not on DeepSpeed's tested list
    }


def build_strategy(trainer_cfg: DictConfig, train_cfg: DictConfig, plan: BatchPlan):
    """The Trainer's strategy: "auto"/"ddp" as given (Lightning picks DDP for devices > 1), or a
    DeepSpeedStrategy built from deepspeed_config."""
    name = trainer_cfg.strategy
    if name in ("auto", "ddp"):
        return name
    if name == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        config = deepspeed_config(trainer_cfg, train_cfg, plan)
        # Lightning 2.6 raises if the config sets this; it copies Trainer(accumulate_grad_batches) in at setup.
        del config["gradient_accumulation_steps"]
        return DeepSpeedStrategy(config=config)
    raise ConfigError(f"trainer.strategy={name!r}: allowed {list(STRATEGIES)}")


def _plain(value: Any) -> Any:
    return OmegaConf.to_object(value) if isinstance(value, (DictConfig, ListConfig)) else value


def checkpoint_callback(run_dir: str | Path):
    """One epoch-end checkpoint kept (the newest), and checkpoints/last.ckpt linking to it.

    save_top_k=0 would write last.ckpt only when fit ends (Lightning 2.6 saves `last` at epoch end only
    if a top-k file was saved at that step), so a killed run could not resume; "link" avoids a 2nd copy."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(dirpath=Path(run_dir) / CHECKPOINT_DIR, filename="{epoch}-{step}", save_top_k=1,
                           save_last="link", every_n_epochs=1, save_on_train_epoch_end=True,
                           enable_version_counter=False)  # a new run overwrites, never last-v1.ckpt


def build_trainer(cfg: DictConfig, run_dir: str | Path, callbacks: Sequence = (), logger: Any = False):
    """(Trainer, BatchPlan) from cfg.trainer and cfg.train; outputs under run_dir."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor

    tr, tc = cfg.trainer, cfg.train
    plan = batch_plan(tc.global_batch_size, tc.micro_batch_size, tr.devices, tr.num_nodes, tr.accelerator)
    deepspeed = tr.strategy == "deepspeed"
    logger = False if logger is None else logger
    all_callbacks = [checkpoint_callback(run_dir), *callbacks]
    if logger:
        all_callbacks.append(LearningRateMonitor(logging_interval="step"))
    max_steps = int(tc.max_steps)
    trainer = L.Trainer(
        accelerator=tr.accelerator,
        devices=_plain(tr.devices),
        num_nodes=int(tr.num_nodes),
        strategy=build_strategy(tr, tc, plan),
        precision=str(tr.precision),
        # DeepSpeed too: Lightning writes it into the DeepSpeed config as gradient_accumulation_steps
        accumulate_grad_batches=plan.accumulate,
        # DeepSpeed clips by its config's gradient_clipping
        gradient_clip_val=None if deepspeed else (float(tc.gradient_clip) if tc.gradient_clip else None),
        max_epochs=-1 if max_steps > 0 else int(tc.epochs),  # train.max_steps > 0 overrides epochs
        max_steps=max_steps,
        log_every_n_steps=int(tr.log_every_n_steps),
        check_val_every_n_epoch=int(tr.check_val_every_n_epoch),
        enable_progress_bar=bool(tr.enable_progress_bar),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
        callbacks=all_callbacks,
        logger=logger,
    )
    return trainer, plan


def resume_checkpoint(run_dir: str | Path, resume: bool) -> str | None:
    """run_dir/checkpoints/last.ckpt when resume and it exists, else None (fresh start)."""
    last = Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not resume:
        if last.exists():
            log.info("%s exists but train.resume=false: training starts from scratch and replaces it", last)
        return None
    if last.exists():
        log.info("train.resume=true: continuing from %s", last)
        return str(last)
    why = "is a dangling link" if last.is_symlink() else "does not exist"
    log.warning("train.resume=true but %s %s: training starts from scratch", last, why)
    return None
