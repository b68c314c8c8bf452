"""The train stage: SFT / distillation / LoRA on chat rows, ending with hf_export/."""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from crescent.config import ConfigError
from crescent.utils import artifacts
from crescent.utils.io import DamagedFileError, read_json, write_json
from crescent.utils.stage import StageContext, StageResult

log = logging.getLogger(__name__)


def training_data(cfg: DictConfig, ctx: StageContext | None) -> Path:
    """train.data, else the SFT rows the pipeline found for this run (ctx.data_path: see crescent.pipeline)."""
    if cfg.train.data:
        path = Path(cfg.train.data)
        if not path.is_file():
            raise ConfigError(f"train.data={cfg.train.data!r}: no such file")
        return path
    if ctx is not None and ctx.data_path is not None and Path(ctx.data_path).is_file():
        _check_against_manifest(Path(ctx.data_path))
        return Path(ctx.data_path)
    raise ConfigError("train.data is null and there is no synthetic data for this config yet: "
                      "run stages=[generate,train] or set train.data=PATH/TO/sft.jsonl")


def _result(record: dict) -> StageResult:
    return StageResult(metrics=record["metrics"], record=record,
                       artifacts={"export": record["export"], "data": record["data"]})


def _check_against_manifest(path: Path) -> None:
    """The synthetic data file as its folder's manifest.json recorded it (size, sha256), else DamagedFileError."""
    manifest_path = path.parent / "manifest.json"
    if not manifest_path.is_file():
        return
    recorded = (read_json(manifest_path, expect=dict).get("artifacts") or {})
    problems = artifacts.verify(path.parent, {k: v for k, v in recorded.items() if k == path.name})
    if problems:
        raise DamagedFileError(f"{problems[0]} (against {manifest_path}): rerun the generate stage "
                               "(stages=[generate,train]); it checks the synth cache, rebuilds what is damaged "
                               "and copies the data into the run dir again")


def _load_teacher(cfg: DictConfig, student_tok):
    """The teacher model for the KD term, or None (no KD, or vocabularies differ)."""
    if float(cfg.train.kd.alpha) <= 0:
        return None
    from crescent.models.loading import load_model_and_tokenizer
    from crescent.train.module import same_vocab

    from crescent.train.trainer import training_dtype

    # frozen, a submodule of the LightningModule: DeepSpeed bf16 casts it to 16 bits as the student
    tok, teacher = load_model_and_tokenizer(cfg.teacher, cfg.paths.cache_dir, dtype=training_dtype(cfg.trainer))
    if not same_vocab(tok, student_tok):
        log.warning("train.kd.alpha=%s ignored: teacher %s and student %s have different vocabularies",
                    cfg.train.kd.alpha, cfg.teacher.name, cfg.student.name)
        return None
    return teacher


def _trainer_builder(cfg: DictConfig):
    """The callable trainer._target_ names (conf/trainer/*.yaml: crescent.train.trainer.build_trainer), through
    hydra.utils.instantiate: fn(cfg, run_dir, callbacks, logger) -> (lightning.Trainer, BatchPlan)."""
    from hydra.utils import instantiate

    target = cfg.trainer.get("_target_")
    if not target:
        raise ConfigError(f"trainer={cfg.trainer.get('name')!r} has no _target_: name the function that builds the "
                          "Lightning Trainer (e.g. _target_: crescent.train.trainer.build_trainer, conf/trainer/cpu.yaml)")
    return instantiate({"_target_": str(target), "_partial_": True})


def _export_problems(run_dir: Path, result: dict) -> list[str]:
    """hf_export/ against the size and sha256 of each file train_result.json recorded (a result written before
    those were recorded: config.json present and every safetensors file whole)."""
    if result.get("artifacts"):
        return artifacts.verify(run_dir, result["artifacts"])
    export = run_dir / "hf_export"
    if not (export / "config.json").is_file():
        return [f"{export / 'config.json'} is missing"]
    from safetensors import safe_open

    problems = []
    for path in sorted(export.glob("*.safetensors")) or [export / "model.safetensors"]:
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as err:  # SafetensorError (torn: "incomplete metadata"), OSError (missing)
            problems.append(f"{path} is damaged ({err})")
    return problems


def finished_result(run_dir: Path, fingerprint: dict, resume) -> dict | None:
    """train_result.json of a finished training of this config whose hf_export/ is intact (every file with the
    recorded size and sha256), unless train.resume=false (which always trains). A damaged export is not reused:
    the training resumes from its last checkpoint (the final step: nothing to train) and exports again."""
    path = run_dir / "train_result.json"
    if str(resume).lower() == "false" or not path.is_file():
        return None
    result = read_json(path, expect=dict, fix=f"delete {path} (the training resumes from its last checkpoint)")
    if result.get("fingerprint") != fingerprint["hash"]:
        return None
    problems = _export_problems(run_dir, result)
    if problems:
        log.warning("train: not reusing %s: %s; exporting again from the last checkpoint (training again if there "
                    "is none)", run_dir / "hf_export", "; ".join(problems))
        return None
    return result


def run(cfg: DictConfig, ctx: StageContext | None = None) -> StageResult:
    """Train on ctx.data_path (or train.data) with ctx.callbacks; hf_export/ and train_result.json in the run dir.
    The result's metrics are the trainer's last logged ones, its record train_result.json.

    Global rank 0 trains under the run dir's training lock: a second training started in the same run dir waits,
    saying who holds it (pid, host, since), then reuses the finished result or resumes the checkpoint instead of
    starting from scratch beside the first."""
    from crescent.utils import dist
    from crescent.utils.locks import UnitLock

    if not dist.is_global_zero():
        return _train(cfg, ctx)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with UnitLock(run_dir / ".train", what=f"the training in {run_dir} (another crescent process trains there)"):
        return _train(cfg, ctx)


def _train(cfg: DictConfig, ctx: StageContext | None = None) -> StageResult:
    import lightning as L

    from crescent.models.loading import load_model_and_tokenizer
    from crescent.train.data import SFTDataModule
    from crescent.train.export import export_hf
    from crescent.train.module import CausalLMModule, apply_lora, enable_gradient_checkpointing
    from crescent.train.trainer import (flatten_batches, gradient_checkpointing_on,
                                        needs_deepspeed_cpu_adam, prepare_checkpoints, resume_checkpoint,
                                        student_load_kwargs, train_fingerprint)

    from crescent.utils import dist

    t0 = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    data_path = training_data(cfg, ctx)
    tracker = ctx.tracker if ctx is not None else None
    tc = cfg.train
    fingerprint = train_fingerprint(cfg, data_path)

    def decide() -> dict:
        """Rank 0 alone looks at (and clears) checkpoints/; every rank follows its decision."""
        done = finished_result(run_dir, fingerprint, tc.resume)
        if done is not None:
            return {"done": done, "ckpt": None}
        ckpt = resume_checkpoint(run_dir, tc.resume, fingerprint)
        prepare_checkpoints(run_dir, fingerprint, resuming=ckpt is not None)
        return {"done": None, "ckpt": ckpt}

    decision = dist.rank_zero_first(run_dir, "train_prepare", decide)
    if decision["done"] is not None:
        log.info("train: %s already holds this training config's result: not training again "
                 "(train.resume=false retrains)", run_dir / "hf_export")
        return _result(decision["done"])
    L.seed_everything(int(tc.seed), workers=True, verbose=False)
    tokenizer, model = load_model_and_tokenizer(cfg.student, cfg.paths.cache_dir, **student_load_kwargs(cfg))
    if gradient_checkpointing_on(cfg):
        enable_gradient_checkpointing(model)
    if tc.lora:
        model = apply_lora(model, tc.lora)
    teacher = _load_teacher(cfg, tokenizer)
    trainer, plan = _trainer_builder(cfg)(cfg, run_dir, callbacks=list(ctx.callbacks) if ctx is not None else [],
                                  logger=tracker.lightning_logger() if tracker is not None else False)
    data = SFTDataModule(str(data_path), tokenizer, max_seq_len=int(tc.max_seq_len),
                         micro_batch_size=plan.micro_batch_size, val_fraction=float(tc.val_fraction),
                         packing=bool(tc.packing), group_by_length=bool(tc.group_by_length), seed=int(tc.seed),
                         flatten=flatten_batches(tc))
    module = CausalLMModule(model, tokenizer, OmegaConf.to_container(tc, resolve=True), teacher=teacher,
                            use_cpu_adam=needs_deepspeed_cpu_adam(cfg.trainer))
    ckpt = decision["ckpt"]
    resumed_from = str(Path(ckpt).resolve()) if ckpt else None  # the file last.ckpt links to
    # SFTDataModule resumes mid-epoch itself (see its state_dict); Lightning only checks the DataLoader.
    # checkpoints/ holds config.json (and, on a resume, the checkpoints): not a sign of a clash.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    dist.adopt_children(trainer)  # rank 0 of Lightning's launcher waits for the ranks it started, at the end
    # every rank enters (a barrier, then rank 0 alone consolidates and writes)
    export_dir = export_hf(module.model, tokenizer, run_dir / "hf_export", trainer=trainer,
                           checkpoint_dir=run_dir / "checkpoints")
    # a resume from the final step trains nothing and logs nothing: keep the checkpoint's metrics
    metrics = {**module.checkpoint_metrics,
               **{k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}
    result = {
        "data": str(data_path), "export": str(export_dir), "student": cfg.student.name,
        "global_step": trainer.global_step, "epochs": trainer.current_epoch, "resumed_from": resumed_from,
        "fingerprint": fingerprint["hash"], "batch_plan": plan._asdict(), "data_stats": getattr(data, "stats", {}),
        "metrics": metrics, "wall_s": round(time.perf_counter() - t0, 2),
    }
    if trainer.is_global_zero:
        result["artifacts"] = artifacts.record([export_dir], run_dir)  # verified before any reuse
        write_json(run_dir / "train_result.json", result)
    return _result(result)
