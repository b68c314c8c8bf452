"""Trainings SIGKILLed at chosen micro batches (tests/helpers/kill_train.py) and resumed end bit-identical to an
uninterrupted one: same final loss, same hf_export bytes. With gradient accumulation a checkpoint written in the
middle of an optimizer step would lose the micro batches accumulated so far (issue 21 item 2)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT, write_addition_sft
from crescent.utils.io import read_json

# 20 rows, 4 of them for validation: 8 micro batches of 2 per epoch, 2 per optimizer step (accumulate 2),
# 4 optimizer steps per epoch, 8 in all; a checkpoint after every optimizer step
TINY = ["model@teacher=tiny_llama", "stages=[train]", "logger=none", "train.max_seq_len=64",
        "train.global_batch_size=4", "train.micro_batch_size=2", "train.epochs=2", "train.optimizer.lr=3e-3",
        "train.scheduler.warmup_ratio=0", "trainer.precision=32-true", "train.val_fraction=0.2",
        "trainer.enable_progress_bar=false", "train.checkpoint_every_n_steps=1", "print_config=false"]


def _train(run_dir: Path, data: Path, kill: str) -> int:
    """One CLI process that SIGKILLs itself at `kill` (tests/helpers/kill_train.py; "-1": never); its return code."""
    cmd = [sys.executable, str(ROOT / "tests" / "helpers" / "kill_train.py"), kill, *TINY, f"train.data={data}",
           f"paths.output_dir={run_dir}", f"hydra.run.dir={run_dir}", f"paths.synth_cache={run_dir.parent}/cache"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if kill == "-1":
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        assert proc.returncode == -signal.SIGKILL, (kill, proc.returncode, proc.stderr[-3000:])
    return proc.returncode


def _last_target(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "last.ckpt").resolve().name


def _final(run_dir: Path) -> tuple[float, bytes, int]:
    result = read_json(run_dir / "train_result.json")
    return result["metrics"]["train/loss"], (run_dir / "hf_export" / "model.safetensors").read_bytes(), \
        result["global_step"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_addition_sft(tmp_path_factory.mktemp("data") / "sft.jsonl")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data) -> tuple[float, bytes, int]:
    """The uninterrupted run (a process of its own, as the killed ones)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    _train(run, data, "-1")
    return _final(run)


def _kills_then_end(run: Path, data: Path, kills, reference) -> None:
    for kill in kills:
        _train(run, data, kill)
    _train(run, data, "-1")
    loss, weights, steps = _final(run)
    assert steps == reference[2] == 8
    assert loss == reference[0]
    assert weights == reference[1]  # hf_export/model.safetensors, byte for byte


def test_kill_mid_accumulation_after_a_resume_then_resume_again(tmp_path, data, reference):
    """The issue's sequence: kill when last.ckpt points at step 2; resume, kill after one micro batch (half an
    optimizer step); resume to the end. Before the fix the resumed run rewrote the step-2 checkpoint after that
    micro batch, counting it as done without its gradient: the final loss and weights differed."""
    run = tmp_path / "run"
    _train(run, data, "4")  # micro batches 0-3: optimizer steps 1 and 2, each with its checkpoint
    assert _last_target(run) == "epoch=0-step=2.ckpt"
    _train(run, data, "1")  # micro batch 4 only: half of optimizer step 3
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["SFTDataModule"] == {"batches_done": 4}  # step 3 starts at batch 4
    # micro batches 4, 5 (optimizer step 3), killed before the checkpoint of step 3 is written
    _train(run, data, "2e")
    assert _last_target(run) == "epoch=0-step=2.ckpt"
    _kills_then_end(run, data, [], reference)


@pytest.mark.slow
def test_a_chain_of_kills_across_an_epoch_end(tmp_path, data, reference):
    """Seven processes: kills mid-accumulation, between an optimizer step and its checkpoint, and after the epoch
    end; each resume continues from the last whole optimizer step."""
    _kills_then_end(tmp_path / "run", data, ["3", "1", "2e", "5", "1e", "4"], reference)


@pytest.mark.slow
@pytest.mark.parametrize("kill", [str(n) for n in range(1, 16)] + [f"{n}e" for n in range(1, 16, 2)])
def test_one_kill_at_every_micro_batch(tmp_path, data, reference, kill):
    _kills_then_end(tmp_path / "run", data, [kill], reference)
