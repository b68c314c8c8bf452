"""hf_export/: a save_pretrained folder (model + tokenizer) that from_pretrained and the eval stage load."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _zero3_state_dict(trainer, checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """Consolidate ZeRO shards of a DeepSpeed checkpoint into one fp32 state dict (rank 0)."""
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    out = checkpoint_dir / "consolidated.pt"
    convert_zero_checkpoint_to_fp32_state_dict(str(checkpoint_dir / "last.ckpt"), str(out))
    state = torch.load(out, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def export_hf(model, tokenizer, out_dir: str | Path, *, trainer=None, checkpoint_dir: Path | None = None) -> Path:
    """Write model + tokenizer with save_pretrained (safetensors); LoRA adapters are merged first,
    ZeRO-3 shards are consolidated from the last checkpoint."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    state_dict = None
    strategy = getattr(trainer, "strategy", None)
    if strategy is not None and type(strategy).__name__ == "DeepSpeedStrategy" and strategy.zero_stage_3:
        state_dict = _zero3_state_dict(trainer, checkpoint_dir)
    if trainer is not None and not trainer.is_global_zero:
        return out_dir
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
