"""ZeRO-3 export with 2 real ranks (gloo process group): every rank calls export_hf after fit, they meet at the
barrier, and rank 0 alone consolidates the shards, once, after both ranks arrived; the export loads with
from_pretrained and gives the logits of the trained weights.

DeepSpeed's zero_to_fp32 reader is monkeypatched (issue 17 allows it): DeepSpeed's CPU accelerator cannot run a
ZeRO-3 engine with gloo here, so the reader returns the trained weights with the prefixes Lightning's DeepSpeed
checkpoint puts before them, and records who called it and when. The model object handed to export_hf holds other
weights (under ZeRO-3 a rank's parameters are empty partitions), so a matching export proves the consolidated
state dict was written."""
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from helpers import model_cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trained(model):
    """The 'trained' weights: a deterministic change of every parameter."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.01 * (i + 1))
    return model


class DeepSpeedStrategy:  # export_hf recognises the strategy by its class name, as Lightning's
    zero_stage_3 = True

    def __init__(self, log_dir: Path, rank: int):
        self.log_dir, self.rank = log_dir, rank

    def barrier(self, name=None):
        (self.log_dir / f"barrier_rank{self.rank}.json").write_text(json.dumps({"t": time.time(), "name": name}))
        torch.distributed.barrier()


class FakeTrainer:
    def __init__(self, strategy, rank, world):
        self.strategy, self.world_size, self.is_global_zero = strategy, world, rank == 0


def _rank(rank: int, world: int, port: int, model_dir: str, work: str) -> None:
    import deepspeed.utils.zero_to_fp32 as z2f
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crescent.train.export import export_hf

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    work = Path(work)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trained = _trained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    partition = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # not the trained weights

    def reader(path, *args, **kwargs):
        (work / f"consolidate_rank{rank}_{time.time_ns()}.json").write_text(
            json.dumps({"rank": rank, "t": time.time(), "path": path}))
        return {f"_forward_module.model.{k}": v.clone() for k, v in trained.state_dict().items()}

    z2f.get_fp32_state_dict_from_zero_checkpoint = reader
    if rank == 1:
        time.sleep(1.0)  # rank 1 arrives late: rank 0 must not consolidate before it
    trainer = FakeTrainer(DeepSpeedStrategy(work, rank), rank, world)
    export_hf(partition, tokenizer, work / "run" / "hf_export", trainer=trainer,
              checkpoint_dir=work / "run" / "checkpoints")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_zero3_export_consolidates_once_on_rank_0_after_the_barrier(tmp_path, cache_dir):
    from transformers import AutoModelForCausalLM

    from crescent.models.loading import resolve_model_dir

    model_dir = resolve_model_dir(model_cfg("tiny_llama"), cache_dir)
    mp.spawn(_rank, args=(2, _free_port(), model_dir, str(tmp_path)), nprocs=2, join=True)

    calls = [json.loads(p.read_text()) for p in tmp_path.glob("consolidate_rank*.json")]
    assert [c["rank"] for c in calls] == [0], calls  # once, on rank 0
    assert calls[0]["path"] == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    arrivals = [json.loads((tmp_path / f"barrier_rank{r}.json").read_text())["t"] for r in (0, 1)]
    assert calls[0]["t"] >= max(arrivals)  # after both ranks reached the barrier
    export = tmp_path / "run" / "hf_export"
    assert (export / "model.safetensors").is_file() and not (tmp_path / "run" / "checkpoints").exists()
    assert not list(tmp_path.rglob("consolidated.pt"))  # no shared intermediate file

    loaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    trained = _trained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, trained(ids).logits)
