"""experiments/perf/memory_plan.py (issue 17 item 3): every paper preset fits 80 GB GPUs with the config it ships,
the totals add up, and it would not fit without gradient checkpointing and chunked logits. The script runs as a
command (one process plans every config these tests need: --jsonl), never imported as a module."""
import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from helpers import CONF, ROOT

SCRIPT = ROOT / "experiments" / "perf" / "memory_plan.py"
GB = 1e9
PAPER = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if "paper" in (OmegaConf.load(p).get("tags") or []))
LLAMA3 = "experiment=crescent_llama3_8b"
NO_SAVINGS = f"{LLAMA3} train.loss_chunk_tokens=null train.gradient_checkpointing=false"
ZERO3 = [f"{LLAMA3} trainer={t}" for t in ("deepspeed_stage_3", "deepspeed_stage_3_offload")]


def run_plans(sets: list[str]) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--jsonl"], input="\n".join(sets), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {" ".join(p["overrides"]): p for p in plans}


@pytest.fixture(scope="module")
def plans() -> dict[str, dict]:
    return run_plans(list(dict.fromkeys([*(f"experiment={p}" for p in PAPER), LLAMA3, NO_SAVINGS, *ZERO3])))


@pytest.mark.parametrize("preset", PAPER)
def test_paper_presets_fit_80gb_gpus(plans, preset):
    result = plans[f"experiment={preset}"]
    rows = result["rows"]
    assert result["gradient_checkpointing"] and result["fits"]
    assert result["total"] < 80 * GB and result["margin"] > 10 * GB, rows
    on = sum(v for k, v in rows.items() if "checkpointing off" not in k)
    assert result["total"] == pytest.approx(on)
    assert result["total_checkpointing_off"] - result["total"] == pytest.approx(
        rows["activations (checkpointing off)"] - rows["activations (checkpointing on)"])
    # sane: more than the 16-bit weights' shard, less than the whole unsharded fp32 training state
    assert 2 * result["params"] / result["batch_plan"]["world_size"] < result["total"] < 16 * result["params"] + 40 * GB
    assert rows["activations (checkpointing on)"] < rows["activations (checkpointing off)"] / 5


def test_llama3_8b_numbers(plans):
    """The issue's figures: ZeRO-2 model states from DeepSpeed's estimator (2P + 18P/8 bytes), ~44-48 GB of
    activations and ~10 GB of fp32 logits without checkpointing / chunking: out of memory on 80 GB cards."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    result = plans[NO_SAVINGS]
    assert result["params"] == 8_030_261_248 == plans[LLAMA3]["params"]
    rows = result["rows"]
    states = rows["weights"] + rows["gradients"] + rows["optimizer (Adam, fp32)"]
    assert states == estimate_zero2_model_states_mem_needs(8_030_261_248, 8, 1, cpu_offload=False)[1]
    assert 40 * GB < rows["activations (checkpointing off)"] < 55 * GB
    assert 9 * GB < rows["logits"] < 12 * GB
    assert not result["fits"] and not result["gradient_checkpointing"]


@pytest.mark.parametrize("overrides", ZERO3, ids=["zero3", "zero3_offload"])
def test_zero3_uses_deepspeeds_zero3_estimator(plans, overrides):
    result = plans[overrides]
    assert "estimate_zero3_model_states_mem_needs" in result["model_states_source"] and result["zero_stage"] == 3
    assert result["rows"]["weights"] < plans[LLAMA3]["rows"]["weights"]


def test_the_command_prints_the_table():
    proc = subprocess.run([sys.executable, str(SCRIPT), LLAMA3, "trainer.devices=8"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| **total, checkpointing on** |" in proc.stdout and "fits" in proc.stdout and "margin" in proc.stdout
    proc = subprocess.run([sys.executable, str(SCRIPT), LLAMA3, "train.gradient_checkpointing=false"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "DOES NOT FIT" in proc.stdout


def test_the_docs_quote_the_plan(plans):
    section = (ROOT / "docs" / "scale.md").read_text().split("\n## GPU memory", 1)[1].split("\n## ", 1)[0]
    result = plans[LLAMA3]
    assert f"**{result['total'] / GB:.1f}** ({result['margin'] / GB:.1f})" in section
    assert f"| {result['total_checkpointing_off'] / GB:.1f} (out of memory) |" in section
