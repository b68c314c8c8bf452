"""Trainer / strategy / batch-plan wiring (fast; DeepSpeed strategies are only constructed on CPU)."""
import io
import os

import lightning as L
import pytest
import torch
from helpers import compose_cfg
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch.utils.data import DataLoader, TensorDataset

from crescent.config import ConfigError
from crescent.train.trainer import (BatchPlan, batch_plan, build_strategy, build_trainer, deepspeed_config,
                                    needs_deepspeed_cpu_adam, prepare_checkpoints, resume_checkpoint,
                                    train_fingerprint)

TRAINERS = ("cpu", "gpu", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload")
# trainer option -> (zero stage, optimizer offloaded, parameters offloaded)
ZERO = {"deepspeed_stage_2": (2, False, False), "deepspeed_stage_3": (3, False, False),
        "deepspeed_stage_3_offload": (3, True, True)}


def plan_of(cfg):
    return batch_plan(cfg.train.global_batch_size, cfg.train.micro_batch_size, cfg.trainer.devices,
                      cfg.trainer.num_nodes, cfg.trainer.accelerator)


@pytest.mark.parametrize("train", ["sft", "distil", "lora"])
@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_option_builds_its_strategy(trainer, train, tmp_path):
    cfg = compose_cfg([f"trainer={trainer}", f"train={train}"], tmp_path)
    plan = plan_of(cfg)
    assert plan == BatchPlan(4, 8, 1, 32)
    strategy = build_strategy(cfg.trainer, cfg.train, plan)
    assert needs_deepspeed_cpu_adam(cfg.trainer) == (trainer == "deepspeed_stage_3_offload")
    if trainer not in ZERO:
        assert strategy == "auto"
        return
    stage, offload_optimizer, offload_params = ZERO[trainer]
    assert isinstance(strategy, DeepSpeedStrategy)
    ds = strategy.config
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert zero.get("offload_optimizer", {}).get("device") == ("cpu" if offload_optimizer else None)
    assert zero.get("offload_param", {}).get("device") == ("cpu" if offload_params else None)
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["train_batch_size"] == 32
    assert ds["gradient_clipping"] == 1.0
    # Lightning refuses gradient_accumulation_steps in the config: it comes from Trainer(accumulate_grad_batches)
    assert "gradient_accumulation_steps" not in ds
    assert deepspeed_config(cfg.trainer, cfg.train, plan)["gradient_accumulation_steps"] == 8


def test_cpu_trainer(tmp_path):
    cfg = compose_cfg(["trainer=cpu"], tmp_path)
    run_dir = tmp_path / "run"
    trainer, plan = build_trainer(cfg, run_dir)
    assert plan.accumulate == 8 and trainer.accumulate_grad_batches == 8
    assert trainer.accelerator.__class__.__name__ == "CPUAccelerator" and trainer.num_devices == 1
    assert trainer.precision == "bf16-mixed" and trainer.max_epochs == 3 and trainer.max_steps == -1
    assert trainer.gradient_clip_val == 1.0 and trainer.num_sanity_val_steps == 0
    (ckpt,) = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert ckpt.dirpath == str(run_dir / "checkpoints") and ckpt.save_last


def test_max_steps_overrides_epochs(tmp_path):
    trainer, _ = build_trainer(compose_cfg(["train.max_steps=5"], tmp_path), tmp_path / "run")
    assert trainer.max_steps == 5 and trainer.max_epochs == -1


def test_deepspeed_trainer_passes_accumulation_and_clipping_through_its_config(tmp_path):
    """What Lightning 2.6 puts into the DeepSpeed config at setup (private API, CPU-constructible part)."""
    cfg = compose_cfg(["trainer=deepspeed_stage_2", "trainer.accelerator=cpu"], tmp_path)
    trainer, plan = build_trainer(cfg, tmp_path / "run")
    assert trainer.gradient_clip_val is None  # DeepSpeed clips from its config
    module = TinyModule()
    module.trainer = trainer
    trainer.strategy.connect(module)
    trainer.strategy._format_config()
    ds = trainer.strategy.config
    assert ds["gradient_accumulation_steps"] == plan.accumulate == 8
    assert ds["gradient_clipping"] == 1.0 and ds["bf16"] == {"enabled": True}


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_global_batch_is_fixed_across_device_counts(devices, tmp_path):
    cfg = compose_cfg(["trainer=deepspeed_stage_2", f"trainer.devices={devices}"], tmp_path)
    plan = plan_of(cfg)
    assert plan.world_size == devices and plan.micro_batch_size == 4 and plan.accumulate == 8 // devices
    ds = deepspeed_config(cfg.trainer, cfg.train, plan)
    assert ds["train_batch_size"] == 32 == (ds["train_micro_batch_size_per_gpu"]
                                            * ds["gradient_accumulation_steps"] * devices)


def test_batch_plan_counts_nodes_and_shrinks_micro():
    assert batch_plan(32, 4, 2, num_nodes=2) == BatchPlan(4, 2, 4, 32)
    assert batch_plan(32, 4, 16) == BatchPlan(2, 1, 16, 32)  # 2 per process
    assert batch_plan(24, 5, 1) == BatchPlan(4, 6, 1, 24)  # largest divisor of 24 that is <= 5
    assert batch_plan(36, 8, 4) == BatchPlan(3, 3, 4, 36)


def test_batch_plan_resolves_all_devices(monkeypatch):
    assert batch_plan(32, 4, -1, accelerator="cpu").world_size == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert batch_plan(32, 4, "auto", accelerator="gpu") == BatchPlan(4, 2, 4, 32)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match="trainer.devices"):
        batch_plan(32, 4, -1, accelerator="gpu")


def test_batch_plan_error_names_keys_and_values():
    with pytest.raises(ConfigError) as err:
        batch_plan(30, 4, 4)
    msg = str(err.value)
    for part in ("train.global_batch_size=30", "train.micro_batch_size=4", "trainer.devices=4"):
        assert part in msg


def test_bad_strategy_and_deepspeed_fields(tmp_path):
    cfg = compose_cfg(["trainer.strategy=fsdp"], tmp_path)
    with pytest.raises(ConfigError, match="trainer.strategy='fsdp'.*deepspeed"):
        build_strategy(cfg.trainer, cfg.train, plan_of(cfg))
    cfg = compose_cfg(["trainer=deepspeed_stage_2", "trainer.deepspeed.offload_parameters=true"], tmp_path)
    with pytest.raises(ConfigError, match="offload_parameters.*stage=3"):
        build_strategy(cfg.trainer, cfg.train, plan_of(cfg))
    cfg = compose_cfg(["trainer=deepspeed_stage_3_offload", "train.optimizer.name=sgd"], tmp_path)
    with pytest.raises(ConfigError, match="train.optimizer.name=adamw"):
        build_strategy(cfg.trainer, cfg.train, plan_of(cfg))


def _torch_file() -> bytes:
    buffer = io.BytesIO()
    torch.save({"global_step": 2}, buffer)
    return buffer.getvalue()


CKPT = _torch_file()  # a whole (tiny) torch checkpoint: resume_checkpoint refuses a damaged one


def test_resume_checkpoint(tmp_path, caplog):
    assert resume_checkpoint(tmp_path, False) is None
    with caplog.at_level("WARNING"):
        assert resume_checkpoint(tmp_path, True) is None
    assert "train.resume=true" in caplog.text and "does not exist" in caplog.text
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(CKPT)
    assert resume_checkpoint(tmp_path, True) == str(last)
    assert resume_checkpoint(tmp_path, False) is None
    last.unlink()
    os.symlink("gone.ckpt", last)  # dangling link: no resume
    assert resume_checkpoint(tmp_path, True) is None
    (last.parent / "epoch=0-step=2.ckpt").write_bytes(CKPT)  # ... unless a checkpoint is left to link to
    assert resume_checkpoint(tmp_path, True) == str(last.parent / "epoch=0-step=2.ckpt")
    from crescent.utils.io import DamagedFileError

    (last.parent / "epoch=0-step=2.ckpt").write_bytes(CKPT[: len(CKPT) // 2])  # torn: named, with the way out
    with pytest.raises(DamagedFileError, match=r"epoch=0-step=2.ckpt .*is damaged.*train.resume=false"):
        resume_checkpoint(tmp_path, True)


def test_resume_auto_needs_the_same_training_config(tmp_path, caplog):
    cfg = compose_cfg(["train.data=tests/data/sft_tiny.jsonl"], tmp_path)
    data = os.path.join(os.path.dirname(__file__), "data", "sft_tiny.jsonl")
    fingerprint = train_fingerprint(cfg, data)
    other = train_fingerprint(compose_cfg(["train.optimizer.lr=0.1", "train.resume=false",
                                           "train.checkpoint_every_n_steps=5"], tmp_path), data)
    assert other["hash"] != fingerprint["hash"] and other["train"]["optimizer"]["lr"] == 0.1
    assert "resume" not in other["train"] and "checkpoint_every_n_steps" not in other["train"]
    assert resume_checkpoint(tmp_path, "auto", fingerprint) is None  # nothing to resume
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    (ckpt_dir / "epoch=0-step=2.ckpt").write_bytes(CKPT)
    os.symlink("epoch=0-step=2.ckpt", ckpt_dir / "last.ckpt")
    with caplog.at_level("WARNING"):  # no checkpoints/config.json: unknown origin
        assert resume_checkpoint(tmp_path, "auto", fingerprint) is None
    assert "another training config" in caplog.text
    prepare_checkpoints(tmp_path, other, resuming=True)  # keeps the checkpoints, records the config
    assert resume_checkpoint(tmp_path, "auto", other) == str(ckpt_dir / "last.ckpt")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert resume_checkpoint(tmp_path, "auto", fingerprint) is None
        assert resume_checkpoint(tmp_path, True, fingerprint) == str(ckpt_dir / "last.ckpt")  # true: anyway
    assert "differs in train.optimizer.lr" in caplog.text and "continuing from it anyway" in caplog.text
    prepare_checkpoints(tmp_path, fingerprint, resuming=False)  # a fresh start drops the old checkpoints
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["config.json"]
    assert resume_checkpoint(tmp_path, True, fingerprint) is None


class TinyModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.epochs_started = []

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def on_train_epoch_start(self):
        last = self.trainer.default_root_dir + "/checkpoints/last.ckpt"
        self.epochs_started.append((self.current_epoch, self.global_step, os.path.exists(last)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(batch_size):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)),
                      batch_size=batch_size)


def test_fit_writes_last_ckpt_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["train.global_batch_size=4", "train.micro_batch_size=2", "trainer.precision=32-true",
                 "trainer.enable_progress_bar=false"]
    trainer, plan = build_trainer(compose_cfg([*overrides, "train.epochs=2"], tmp_path), run_dir)
    assert plan == BatchPlan(2, 2, 1, 4)  # 4 micro-batches per epoch -> 2 optimizer steps
    first = TinyModule()
    trainer.fit(first, _loader(plan.micro_batch_size), _loader(plan.micro_batch_size))
    assert trainer.global_step == 4
    assert first.epochs_started == [(0, 0, False), (1, 2, True)]  # last.ckpt exists after epoch 0
    ckpt = resume_checkpoint(run_dir, True)
    assert ckpt == str(run_dir / "checkpoints" / "last.ckpt")
    assert torch.load(ckpt, weights_only=False)["global_step"] == 4

    trainer, _ = build_trainer(compose_cfg([*overrides, "train.epochs=3"], tmp_path), run_dir)
    second = TinyModule()
    trainer.fit(second, _loader(2), _loader(2), ckpt_path=ckpt)
    assert second.epochs_started == [(2, 4, True)]  # continues at epoch 2, step 4
    assert trainer.global_step == 6 and trainer.current_epoch == 3
    assert torch.load(resume_checkpoint(run_dir, True), weights_only=False)["global_step"] == 6
    # one full checkpoint kept; last.ckpt links to it
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch=2-step=6.ckpt", "last.ckpt"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_symlink()


def test_checkpoint_every_n_steps_adds_mid_epoch_checkpoints(tmp_path):
    class Links(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            last = os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")
            seen.append(os.path.basename(os.path.realpath(last)) if os.path.exists(last) else None)

    seen = []
    cfg = compose_cfg(["train.global_batch_size=2", "train.micro_batch_size=2", "train.epochs=2",
                       "train.checkpoint_every_n_steps=3", "trainer.enable_progress_bar=false"], tmp_path)
    trainer, _ = build_trainer(cfg, tmp_path / "run", callbacks=[Links()])
    trainer.fit(TinyModule(), _loader(2))  # 4 steps per epoch
    assert seen == [None, None, None, "epoch=0-step=3.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=4.ckpt",
                    "epoch=1-step=6.ckpt", "epoch=1-step=6.ckpt"]  # steps 3 and 6, and each epoch end
    assert os.path.realpath(tmp_path / "run" / "checkpoints" / "last.ckpt").endswith("epoch=1-step=8.ckpt")
    with pytest.raises(ConfigError, match="checkpoint_every_n_steps"):
        build_trainer(compose_cfg(["train.checkpoint_every_n_steps=-1"], tmp_path), tmp_path / "run")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_deepspeed_stage_2_fits_on_gpu(tmp_path):
    class AdamModule(TinyModule):
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    run_dir = tmp_path / "run"
    cfg = compose_cfg(["trainer=deepspeed_stage_2", "trainer.devices=1", "train.epochs=1",
                       "train.global_batch_size=4", "train.micro_batch_size=2"], tmp_path)
    trainer, plan = build_trainer(cfg, run_dir)
    trainer.fit(AdamModule(), _loader(plan.micro_batch_size))
    assert trainer.global_step == 2
    assert trainer.strategy.config["gradient_accumulation_steps"] == 2
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
