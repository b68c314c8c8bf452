"""The train stage on tiny models: loss goes down, export reloads exactly, resume, distil, LoRA."""
import json

import pytest
import torch
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
    rows = []
    for i in range(20):
        a, b = i + 2, 3 * i + 1
        rows.append({"id": f"r{i}", "messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"We add {a} and {b}: {a} + {b} = {a + b}.\n#### {a + b}"}]})
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
    result = pipeline.run(cfg)["train"]
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


def test_resume_continues_from_the_saved_step(make_cfg, sft_file, tmp_path):
    first = pipeline.run(make_cfg(*TINY, f"train.data={sft_file}", "train.epochs=1"))["train"]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    second = pipeline.run(make_cfg(*TINY, f"train.data={sft_file}", "train.epochs=2", "train.resume=true"))["train"]
    assert second["resumed_from"].endswith("last.ckpt")
    assert second["global_step"] == 2 * first["global_step"]


def test_distil_into_a_weaker_student_with_kd(make_cfg, sft_file):
    cfg = make_cfg(*TINY, f"train.data={sft_file}", "train=distil", "model@teacher=smollm2_135m_instruct",
                   "model@student=tiny_llama", "train.epochs=1")
    result = pipeline.run(cfg)["train"]
    assert result["student"] == "tiny_llama"
    assert "train/kd" in result["metrics"] and result["metrics"]["train/kd"] > 0


def test_lora_is_merged_at_export(make_cfg, sft_file, tmp_path):
    result = pipeline.run(make_cfg(*TINY, f"train.data={sft_file}", "train=lora", "train.epochs=1"))["train"]
    export = tmp_path / "run" / "hf_export"
    assert not (export / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(export)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert result["global_step"] > 0


def test_missing_data_fails_before_loading_a_model(make_cfg, tmp_path):
    from crescent.config import ConfigError

    with pytest.raises(ConfigError, match="train.data is null"):
        pipeline.run(make_cfg(*TINY))
