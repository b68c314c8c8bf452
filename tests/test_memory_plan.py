"""experiments/perf/memory_plan.py (issue 17 item 3): every paper preset fits 80 GB GPUs with the config it ships,
the totals add up, and it would not fit without gradient checkpointing and chunked logits."""
import importlib.util
import subprocess
import sys

import pytest
from helpers import CONF, ROOT
from omegaconf import OmegaConf

spec = importlib.util.spec_from_file_location("memory_plan", ROOT / "experiments" / "perf" / "memory_plan.py")
memory_plan = sys.modules.setdefault("memory_plan", importlib.util.module_from_spec(spec))
spec.loader.exec_module(memory_plan)
GB = 1e9
PAPER = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if "paper" in (OmegaConf.load(p).get("tags") or []))


@pytest.mark.parametrize("preset", PAPER)
def test_paper_presets_fit_80gb_gpus(preset):
    result = memory_plan.plan(memory_plan.compose([f"experiment={preset}"]))
    rows = result["rows"]
    assert result["gradient_checkpointing"] and result["fits"]
    assert result["total"] < 80 * GB and result["margin"] > 10 * GB, memory_plan.table(result)
    on = sum(v for k, v in rows.items() if "checkpointing off" not in k)
    assert result["total"] == pytest.approx(on)
    assert result["total_checkpointing_off"] - result["total"] == pytest.approx(
        rows["activations (checkpointing off)"] - rows["activations (checkpointing on)"])
    # sane: more than the 16-bit weights' shard, less than the whole unsharded fp32 training state
    assert 2 * result["params"] / result["batch_plan"]["world_size"] < result["total"] < 16 * result["params"] + 40 * GB
    assert rows["activations (checkpointing on)"] < rows["activations (checkpointing off)"] / 5


def test_llama3_8b_numbers():
    """The issue's figures: ZeRO-2 model states from DeepSpeed's estimator (2P + 18P/8 bytes), ~44-48 GB of
    activations and ~10 GB of fp32 logits without checkpointing / chunking: out of memory on 80 GB cards."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    assert memory_plan.KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B-Instruct"].params() == 8_030_261_248
    result = memory_plan.plan(memory_plan.compose(["experiment=crescent_llama3_8b", "train.loss_chunk_tokens=null",
                                                   "train.gradient_checkpointing=false"]))
    rows = result["rows"]
    states = rows["weights"] + rows["gradients"] + rows["optimizer (Adam, fp32)"]
    assert states == estimate_zero2_model_states_mem_needs(8_030_261_248, 8, 1, cpu_offload=False)[1]
    assert 40 * GB < rows["activations (checkpointing off)"] < 55 * GB
    assert 9 * GB < rows["logits"] < 12 * GB
    assert not result["fits"] and not result["gradient_checkpointing"]


@pytest.mark.parametrize("trainer", ["deepspeed_stage_3", "deepspeed_stage_3_offload"])
def test_zero3_uses_deepspeeds_zero3_estimator(trainer):
    result = memory_plan.plan(memory_plan.compose(["experiment=crescent_llama3_8b", f"trainer={trainer}"]))
    assert "estimate_zero3_model_states_mem_needs" in result["model_states_source"] and result["zero_stage"] == 3
    z2 = memory_plan.plan(memory_plan.compose(["experiment=crescent_llama3_8b"]))
    assert result["rows"]["weights"] < z2["rows"]["weights"]


def test_the_command_prints_the_table():
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "perf" / "memory_plan.py"),
                           "experiment=crescent_llama3_8b", "trainer.devices=8"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| **total, checkpointing on** |" in proc.stdout and "fits" in proc.stdout and "margin" in proc.stdout
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "perf" / "memory_plan.py"),
                           "experiment=crescent_llama3_8b", "train.gradient_checkpointing=false"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "DOES NOT FIT" in proc.stdout


def test_the_docs_quote_the_plan():
    section = (ROOT / "docs" / "scale.md").read_text().split("\n## GPU memory", 1)[1].split("\n## ", 1)[0]
    result = memory_plan.plan(memory_plan.compose(["experiment=crescent_llama3_8b"]))
    assert f"**{result['total'] / GB:.1f}** ({result['margin'] / GB:.1f})" in section
    assert f"| {result['total_checkpointing_off'] / GB:.1f} (out of memory) |" in section
