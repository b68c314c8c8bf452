"""Real 2-process runs (Lightning DDP on CPU, gloo) of stages=[generate,train,eval] on the tiny model, through
Lightning's own launcher and through torchrun: one generation, one training result, one export, one eval of base
and trained, one status.json sequence and one W&B run for the job."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JOB = [
    "debug=default", "stages=[generate,train,eval]", "print_config=false",
    "trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.precision=32-true",
    "trainer.enable_progress_bar=false", "logger=wandb",
    # the random tiny model keeps no SFT rows of its own: train on the fixture chats (generation still runs)
    f"train.data={ROOT / 'tests' / 'data' / 'sft_tiny.jsonl'}", "train.max_seq_len=96", "train.global_batch_size=4",
    "train.micro_batch_size=2", "train.epochs=1", "train.val_fraction=0",
    "eval=smoke", "eval.limit=2", "eval.max_gen_toks=8", "eval.dtype=float32",
]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1", "CRESCENT_RANK_WAIT_S": "600"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_one_job(run_dir: Path, output: str) -> None:
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "ok" and status["done"] == ["generate", "train", "eval"], status
    launches = list((run_dir / ".ranks").iterdir())
    assert len(launches) == 1, launches  # both ranks agreed on one launch
    ranks = {int(p.stem.removeprefix("rank")): json.loads(p.read_text()) for p in launches[0].glob("rank*.json")}
    assert sorted(ranks) == [0, 1] and all(r["world_size"] == 2 and r["status"] == "ok" for r in ranks.values())
    # generation once (rank 1 read rank 0's result), training on both, eval on rank 0 only
    assert ranks[0]["stages"] == {"generate": "ran", "train": "ran", "eval": "ran"}, ranks[0]
    assert ranks[1]["stages"] == {"generate": "waited", "train": "ran", "eval": "skipped"}, ranks[1]
    # exactly one status.json write sequence: running, one per stage, ok; none from rank 1
    assert ranks[0]["status_writes"] == 5 and ranks[1]["status_writes"] == 0
    manifests = list(run_dir.rglob("manifest.json"))
    assert manifests == [run_dir / "synth" / "manifest.json"]
    ids = [json.loads(line)["id"] for line in (run_dir / "synth" / "questions.jsonl").read_text().splitlines()]
    assert ids and len(ids) == len(set(ids))  # no duplicate units
    assert output.count("loading teacher tiny_llama") == 1  # the generation model was loaded by one process
    assert list(run_dir.rglob("train_result.json")) == [run_dir / "train_result.json"]
    assert (run_dir / "hf_export" / "config.json").is_file() and not (run_dir / "hf_export.tmp").exists()
    assert not list(run_dir.rglob("consolidated.pt"))
    rows = json.loads((run_dir / "eval" / "results.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"base", "trained"}
    assert sorted(p.name for p in (run_dir / "eval" / "parts").iterdir()) == ["base_0shot.json", "trained_0shot.json"]
    assert output.count("eval: scoring base") == 1 and output.count("eval: scoring trained") == 1
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # one W&B run for the job


@pytest.mark.slow
def test_two_processes_with_lightnings_launcher(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "crescent", *JOB, f"hydra.run.dir={run_dir}",
                           f"paths.synth_cache={tmp_path / 'synth'}", f"paths.eval_cache={tmp_path / 'eval_cache'}"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1500)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    _check_one_job(run_dir, output)
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 was started by Lightning (own Hydra log)


@pytest.mark.slow
def test_two_processes_with_torchrun(tmp_path):
    """No hydra.run.dir: the two ranks compute the default run dir on their own and must land in one folder."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", "-m", "crescent", *JOB,
                           f"paths.synth_cache={tmp_path / 'synth'}", f"paths.eval_cache={tmp_path / 'eval_cache'}"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=1500)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    run_dirs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    _check_one_job(run_dirs[0], output)
    assert (run_dirs[0] / "crescent_rank1.log").is_file() and (run_dirs[0] / ".hydra").is_dir()
