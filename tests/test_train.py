"""The train stage on tiny models: loss goes down, export reloads exactly, resume, distil, LoRA."""
import json
import os

import lightning as L
import pytest
import torch
from helpers import compose_cfg, write_addition_sft
from transformers import AutoModelForCausalLM

from crescent import pipeline
from crescent.models.loading import load_model_and_tokenizer
from crescent.train.data import tokenize_chat
from crescent.train.module import masked_ce
from crescent.utils.io import read_json

TINY = ["model@teacher=tiny_llama", "stages=[train]", "logger=none", "train.max_seq_len=96",
        "train.global_batch_size=4", "train.micro_batch_size=2", "train.epochs=2", "train.optimizer.lr=3e-3",
        "train.scheduler.warmup_ratio=0", "trainer.precision=32-true", "train.val_fraction=0.2",
        "trainer.enable_progress_bar=false"]


@pytest.fixture
def sft_file(tmp_path):
    return write_addition_sft(tmp_path / "sft.jsonl")


def _mean_loss(model, tokenizer, path) -> float:
    losses = []
    for line in path.read_text().splitlines():
        ex = tokenize_chat(json.loads(line)["messages"], tokenizer, 96)
        ids, labels = torch.tensor([ex["input_ids"]]), torch.tensor([ex["labels"]])
        with torch.no_grad():
            losses.append(masked_ce(model(input_ids=ids).logits, labels)[0].item())
    return sum(losses) / len(losses)


def test_fit_lowers_loss_and_export_reloads_identically(make_cfg, sft_file, tmp_path):
    cfg = make_cfg(*TINY, f"train.data={sft_file}", "train.epochs=4")
    tokenizer, base = load_model_and_tokenizer(cfg.student, cfg.paths.cache_dir, dtype="float32")
    before = _mean_loss(base, tokenizer, sft_file)
    result = pipeline.run(cfg)["train"].record
    run = tmp_path / "run"
    exported = AutoModelForCausalLM.from_pretrained(run / "hf_export", dtype=torch.float32).eval()
    after = _mean_loss(exported, tokenizer, sft_file)
    assert after < 0.8 * before, (before, after)
    # the export holds exactly the weights of the last checkpoint
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    base.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=True)
    ids = torch.tensor([tokenize_chat(json.loads(sft_file.read_text().splitlines()[0])["messages"],
                                      tokenizer, 96)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(base(input_ids=ids).logits, exported(input_ids=ids).logits)
    assert (run / "hf_export" / "tokenizer_config.json").exists()
    assert result["global_step"] > 0 and "val/loss" in result["metrics"] and "train/loss" in result["metrics"]
    assert read_json(run / "status.json")["status"] == "ok"


def test_resume_continues_from_the_saved_step(make_cfg, sft_file, tmp_path, caplog):
    first = pipeline.run(make_cfg(*TINY, f"train.data={sft_file}", "train.epochs=1"))["train"].record
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    # train.resume=true continues whatever training config wrote the checkpoint
    second = pipeline.run(make_cfg(*TINY, f"train.data={sft_file}", "train.epochs=2", "train.resume=true"))["train"].record
    assert second["resumed_from"].endswith(f"step={first['global_step']}.ckpt")
    assert second["global_step"] == 2 * first["global_step"]
    # train.resume=auto (the default) only its own: epochs=3 is another config (another lr schedule)
    with caplog.at_level("WARNING"):
        third = pipeline.run(make_cfg(*TINY, f"train.data={sft_file}", "train.epochs=3"))["train"].record
    assert third["resumed_from"] is None and "differs in train.epochs" in caplog.text
    assert third["global_step"] == 3 * first["global_step"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt")) == [
        f"epoch=2-step={third['global_step']}.ckpt", "last.ckpt"]  # the other config's checkpoint is gone


class StopAfter(L.Callback):
    """Raises once `steps` optimizer steps are done (after their checkpoint): a crash mid-training."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step >= self.steps:
            raise RuntimeError(f"stopped at step {trainer.global_step}")


def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(make_cfg, sft_file, tmp_path, monkeypatch):
    # 16 train rows / micro 2 = 8 micro batches, 4 optimizer steps per epoch: step 3 is mid-epoch
    args = (*TINY, f"train.data={sft_file}", "train.checkpoint_every_n_steps=1")
    ref_dir, run = tmp_path / "reference" / "run", tmp_path / "run"
    reference = pipeline.run(compose_cfg(args, tmp_path / "reference"))["train"].record
    for stop in (3, 5):  # mid-epoch 0; then, resumed from step 3, past the epoch end to mid-epoch 1
        monkeypatch.setattr("crescent.eval.callback.eval_callbacks", lambda *a: [StopAfter(stop)])
        with pytest.raises(RuntimeError, match=f"stopped at step {stop}"):
            pipeline.run(make_cfg(*args))
    monkeypatch.undo()
    resumed = pipeline.run(make_cfg(*args))["train"].record
    assert resumed["resumed_from"].endswith("epoch=1-step=5.ckpt")
    assert resumed["global_step"] == reference["global_step"] == 8
    for key in ("train/loss", "val/loss"):
        assert resumed["metrics"][key] == reference["metrics"][key]
    ref_state, state = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
                        for d in (ref_dir, run))
    assert ref_state.keys() == state.keys() and all(torch.equal(ref_state[k], state[k]) for k in ref_state)

    # a rerun of the finished training does not train again and keeps the metrics of the run that trained
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: pytest.fail("trained again"))
    again = pipeline.run(make_cfg(*args))["train"].record
    assert again["metrics"] == resumed["metrics"] and again["resumed_from"] == resumed["resumed_from"]


def test_resuming_from_the_final_checkpoint_keeps_the_metrics(make_cfg, sft_file, tmp_path):
    """A kill after the last checkpoint but before train_result.json: fit has nothing left to do."""
    args = (*TINY, f"train.data={sft_file}", "train.epochs=1")
    first = pipeline.run(make_cfg(*args))["train"].record
    (tmp_path / "run" / "train_result.json").unlink()
    again = pipeline.run(make_cfg(*args))["train"].record
    assert again["resumed_from"].endswith(f"step={first['global_step']}.ckpt")
    assert again["global_step"] == first["global_step"]
    assert again["metrics"]["train/loss"] == first["metrics"]["train/loss"]
    assert again["metrics"]["val/loss"] == first["metrics"]["val/loss"]


def test_eval_parts_key_on_the_exported_weights_not_their_mtime(tmp_path):
    from crescent.eval.stage import unit_key

    export = tmp_path / "hf_export"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"weights")
    model = {"name": "x+trained", "local_path": str(export)}
    key = unit_key({}, {"gsm8k": {}}, model, 0, tmp_path / "cache")
    os.utime(export / "model.safetensors", (1, 1))  # a re-export of equal weights
    assert unit_key({}, {"gsm8k": {}}, model, 0, tmp_path / "cache") == key
    (export / "model.safetensors").write_bytes(b"weightz")
    assert unit_key({}, {"gsm8k": {}}, model, 0, tmp_path / "cache") != key


def test_distil_into_a_weaker_student_with_kd(make_cfg, sft_file):
    cfg = make_cfg(*TINY, f"train.data={sft_file}", "train=distil", "model@teacher=smollm2_135m_instruct",
                   "model@student=tiny_llama", "train.epochs=1")
    result = pipeline.run(cfg)["train"].record
    assert result["student"] == "tiny_llama"
    assert "train/kd" in result["metrics"] and result["metrics"]["train/kd"] > 0


def test_lora_is_merged_at_export(make_cfg, sft_file, tmp_path):
    result = pipeline.run(make_cfg(*TINY, f"train.data={sft_file}", "train=lora", "train.epochs=1"))["train"].record
    export = tmp_path / "run" / "hf_export"
    assert not (export / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(export)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert result["global_step"] > 0


def test_missing_data_fails_before_loading_a_model(make_cfg, tmp_path):
    from crescent.config import ConfigError

    with pytest.raises(ConfigError, match="train.data is null"):
        pipeline.run(make_cfg(*TINY))
