"""hf_export/: a save_pretrained folder (model + tokenizer) that from_pretrained and the eval stage load.

With several ranks, every rank calls export_hf after trainer.fit: they meet at a barrier (all checkpoint shards are
on disk and nobody is still writing), then global rank 0 alone builds the export; the others return. Under ZeRO-3
the full weights exist only as shards in the last DeepSpeed checkpoint: rank 0 consolidates them once, in memory
(DeepSpeed's own zero_to_fp32 reader), straight into save_pretrained's safetensors shards: no shared intermediate
file that several ranks would write and read at once, and one copy of the weights in host RAM instead of one per rank.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# prefixes Lightning puts before the Hugging Face module's parameter names in a DeepSpeed checkpoint
_PREFIXES = ("_forward_module.", "module.")


def _zero3_state_dict(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of the HF model from the ZeRO shards of checkpoint_dir/last.ckpt (a DeepSpeed checkpoint
    folder), consolidated in this process's memory with DeepSpeed's zero_to_fp32 reader."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(Path(checkpoint_dir) / "last.ckpt"))
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        if key.startswith("model."):  # CausalLMModule.model is the HF model
            out[key.removeprefix("model.")] = value
    return out


def _is_zero3(trainer) -> bool:
    strategy = getattr(trainer, "strategy", None)
    return strategy is not None and type(strategy).__name__ == "DeepSpeedStrategy" and bool(strategy.zero_stage_3)


def export_hf(model, tokenizer, out_dir: str | Path, *, trainer=None, checkpoint_dir: Path | None = None) -> Path:
    """Write model + tokenizer with save_pretrained (safetensors); LoRA adapters are merged first, ZeRO-3 shards are
    consolidated from the last checkpoint. Call it on every rank: it waits for all, then rank 0 writes."""
    out_dir = Path(out_dir)
    if trainer is not None and trainer.world_size > 1:
        trainer.strategy.barrier("export_hf")  # every rank has finished fit and its checkpoint writes
    if trainer is not None and not trainer.is_global_zero:
        return out_dir
    state_dict = None
    if _is_zero3(trainer):
        if checkpoint_dir is None:
            raise ValueError("export_hf under ZeRO-3 needs checkpoint_dir (the folder holding last.ckpt)")
        state_dict = _zero3_state_dict(Path(checkpoint_dir))
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "merge_and_unload"):  # peft LoRA
        model = model.merge_and_unload()
    was_training = model.training
    model.eval()
    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    model.train(was_training)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log.info("exported %s", out_dir)
    return out_dir
