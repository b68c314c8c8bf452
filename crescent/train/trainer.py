"""The Lightning Trainer for the train stage, built from cfg.trainer and cfg.train.

- batch_plan: micro-batch / accumulation so that train.global_batch_size holds for any device count.
- deepspeed_config: the DeepSpeed JSON config, built from trainer.deepspeed (no hand-written JSON).
- build_trainer: the Trainer with checkpoints/last.ckpt after every epoch (and every
  train.checkpoint_every_n_steps optimizer steps); resume_checkpoint decides whether to continue from it.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from crescent.config import ConfigError
from crescent.config.choices import STRATEGIES
from crescent.utils.hashing import plain, stable_hash

log = logging.getLogger(__name__)

ZERO_STAGES = (0, 1, 2, 3)
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
FINGERPRINT_FILE = "config.json"  # in CHECKPOINT_DIR: the training config that wrote the checkpoints


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


def training_dtype(trainer_cfg: DictConfig) -> str:
    """The dtype the student's weights train in, so it is loaded in it (no fp32 copy on the host first).

    DeepSpeed with bf16/fp16 casts the parameters to 16 bits itself (its optimizer keeps the fp32 master
    copy), as do Lightning's "-true" precisions; Lightning's "-mixed" precisions (DDP, CPU) autocast and
    need fp32 weights."""
    precision = str(trainer_cfg.precision)
    bf16, fp16 = _precision_flags(precision)
    if (bf16 or fp16) and (trainer_cfg.strategy == "deepspeed" or precision.endswith("-true")):
        return "bfloat16" if bf16 else "float16"
    return "float32"


def gradient_checkpointing_on(cfg: DictConfig) -> bool:
    """train.gradient_checkpointing: true / false, or "auto" = on when training on GPUs (trainer.accelerator
    gpu/cuda, or strategy deepspeed): off on CPU, where activations fit and recomputation only costs time."""
    value = cfg.train.get("gradient_checkpointing", False)
    if str(value).lower() == "auto":
        return cfg.trainer.accelerator in ("gpu", "cuda") or cfg.trainer.strategy == "deepspeed"
    return bool(value)


def student_load_kwargs(cfg: DictConfig) -> dict[str, str]:
    """How the train stage loads the student: in the training dtype, with train.attn_implementation."""
    return {"dtype": training_dtype(cfg.trainer), "attn_implementation": str(cfg.train.get("attn_implementation", "sdpa"))}


def flatten_batches(train_cfg: DictConfig) -> bool:
    """Padding-free batches (data.collate_flat) with FlashAttention-2, which cannot take a dense 4D mask."""
    return str(train_cfg.get("attn_implementation", "sdpa")).startswith("flash_attention")


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


def checkpoint_callback(run_dir: str | Path, every_n_steps: int | None = None):
    """The newest checkpoint kept (written at epoch ends and, if every_n_steps, every n optimizer steps),
    and checkpoints/last.ckpt linking to it.

    save_top_k=0 would write last.ckpt only when fit ends (Lightning 2.6 saves `last` at epoch end only
    if a top-k file was saved at that step), so a killed run could not resume; "link" avoids a 2nd copy."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    if every_n_steps is not None and int(every_n_steps) < 0:
        raise ConfigError(f"train.checkpoint_every_n_steps={every_n_steps!r}: null or 0 (epoch ends only) "
                          "or an integer >= 1")

    class Checkpoint(ModelCheckpoint):
        """Writes only at optimizer-step boundaries: a checkpoint holds the weights, optimizer and data position
        of a whole number of optimizer steps, never the gradient of a half-accumulated step (it is not saved,
        so a resume from such a checkpoint would skip the micro batches accumulated so far)."""

        _step_at_batch_start = -1

        def on_train_start(self, trainer, pl_module) -> None:
            super().on_train_start(trainer, pl_module)
            # Resumed: the checkpoint of this step is the one fit resumed from. Lightning starts counting at 0,
            # so its step trigger would otherwise rewrite it after the first micro batch, mid-accumulation.
            self._last_global_step_saved = trainer.global_step

        def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
            self._step_at_batch_start = trainer.global_step

        def on_train_batch_end(self, trainer, *args, **kwargs):
            if trainer.global_step == self._step_at_batch_start:
                return  # no optimizer step in this micro batch: its gradient is only accumulated so far
            # Not on an epoch's last batch: Lightning 2.6 resumes such a checkpoint with its epoch counter
            # one short, so the next checkpoint's resume repeats an epoch. The epoch-end one follows.
            if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
                super().on_train_batch_end(trainer, *args, **kwargs)

    callback = Checkpoint(dirpath=Path(run_dir) / CHECKPOINT_DIR, filename="{epoch}-{step}", save_top_k=1,
                          save_last="link", every_n_epochs=1, save_on_train_epoch_end=True,
                          enable_version_counter=False)  # a new run overwrites, never last-v1.ckpt
    # Lightning's constructor takes one trigger only; the step trigger is read from this attribute
    callback._every_n_train_steps = int(every_n_steps or 0)
    return callback


def build_trainer(cfg: DictConfig, run_dir: str | Path, callbacks: Sequence = (), logger: Any = False):
    """(Trainer, BatchPlan) from cfg.trainer and cfg.train; outputs under run_dir."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor

    tr, tc = cfg.trainer, cfg.train
    plan = batch_plan(tc.global_batch_size, tc.micro_batch_size, tr.devices, tr.num_nodes, tr.accelerator)
    deepspeed = tr.strategy == "deepspeed"
    logger = False if logger is None else logger
    all_callbacks = [checkpoint_callback(run_dir, tc.get("checkpoint_every_n_steps")), *callbacks]
    if logger:
        all_callbacks.append(LearningRateMonitor(logging_interval="step"))
    max_steps = int(tc.max_steps)
    trainer = L.Trainer(
        accelerator=tr.accelerator,
        devices=plain(tr.devices),
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


def train_fingerprint(cfg: DictConfig, data_path: str | Path) -> dict:
    """What decides the trained weights: train.* (less resume, checkpointing and the data path), the
    precision, the student (and the KD teacher), the data file's sha256; "hash" sums it up."""
    from crescent.models.embedded import file_sha256

    train = OmegaConf.to_container(cfg.train, resolve=True)
    for key in ("resume", "checkpoint_every_n_steps", "data", "gradient_checkpointing"):  # same weights either way
        train.pop(key, None)
    parts = {"train": train, "precision": str(cfg.trainer.precision),
             "student": OmegaConf.to_container(cfg.student, resolve=True),
             "teacher": OmegaConf.to_container(cfg.teacher, resolve=True) if float(train["kd"]["alpha"]) > 0 else None,
             "data_sha256": file_sha256(data_path, cfg.paths.cache_dir)}
    return {"hash": stable_hash(parts), **parts}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _fingerprint_diff(saved: dict | None, fingerprint: dict) -> str:
    if not saved:
        return f"no {CHECKPOINT_DIR}/{FINGERPRINT_FILE} says which"
    a, b = _flat(saved), _flat(fingerprint)
    keys = sorted(k for k in a.keys() | b.keys() if k != "hash" and a.get(k) != b.get(k))
    return "differs in " + ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")


def _check_checkpoint(path: Path) -> None:
    """A checkpoint file that is a whole torch zip archive (its central directory, at the end, is read: a torn or
    truncated file fails here instead of in torch.load with `PytorchStreamReader failed` on every rerun).
    DeepSpeed checkpoints are folders: left to DeepSpeed."""
    import zipfile

    from crescent.utils.io import DamagedFileError

    if path.is_dir():
        return
    target = path.resolve()
    try:
        with zipfile.ZipFile(target) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                raise zipfile.BadZipFile("no data.pkl in it")
    except (zipfile.BadZipFile, OSError) as err:
        raise DamagedFileError(
            f"{target} (the checkpoint {path} points to) is damaged: expected a torch checkpoint, could not read it "
            f"({err}); rerun with train.resume=false to train from scratch (it replaces the checkpoints), or delete "
            f"{target} to resume from an older one if {path.parent} holds one") from err


def resume_checkpoint(run_dir: str | Path, resume: bool | str, fingerprint: dict | None = None) -> str | None:
    """run_dir/checkpoints/last.ckpt to continue from, or None (fresh start).

    resume=false: never; true: whenever it exists (a warning if another training config wrote it);
    "auto": only when checkpoints/config.json holds this `fingerprint` (else a warning and a fresh start)."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    last = ckpt_dir / LAST_CHECKPOINT
    mode = str(resume).lower()
    if mode == "false":
        log.info("train.resume=false: training starts from scratch%s", f" and replaces {last}" if last.exists() else "")
        return None
    if last.is_symlink() and not last.exists():  # killed between Lightning's removal of the old one and relink
        steps = {int(m.group(1)): p for p in ckpt_dir.glob("*.ckpt") if (m := re.search(r"step=(\d+)\.ckpt$", p.name))}
        last = steps[max(steps)] if steps else last
    if not last.exists():
        why = "is a dangling link" if last.is_symlink() else "does not exist"
        level = logging.WARNING if mode == "true" else logging.INFO
        log.log(level, "train.resume=%s but %s %s: training starts from scratch", mode, last, why)
        return None
    if fingerprint is not None:
        try:
            saved = json.loads((ckpt_dir / FINGERPRINT_FILE).read_text())
        except (OSError, ValueError):
            saved = None
        if (saved or {}).get("hash") != fingerprint["hash"]:
            what = f"{last} was written by another training config ({_fingerprint_diff(saved, fingerprint)})"
            if mode == "auto":
                log.warning("train.resume=auto: %s: training starts from scratch", what)
                return None
            log.warning("train.resume=true: %s: continuing from it anyway", what)
    _check_checkpoint(last)
    log.info("train.resume=%s: continuing from %s", mode, last.resolve())
    return str(last)


def prepare_checkpoints(run_dir: str | Path, fingerprint: dict, resuming: bool) -> None:
    """Before fit: a fresh start removes older checkpoints (so a later resume cannot take one of them for
    this config's), then checkpoints/config.json records the config that writes the next ones."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    if not resuming and ckpt_dir.is_dir():
        (ckpt_dir / LAST_CHECKPOINT).unlink(missing_ok=True)  # first: a kill from here on means no resume
        for path in ckpt_dir.glob("*.ckpt"):  # DeepSpeed checkpoints are folders
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    from crescent.utils.io import write_json

    write_json(ckpt_dir / FINGERPRINT_FILE, fingerprint)
