"""A tiny randomly initialised Llama with SmolLM2's tokenizer, for fast tests."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from crescent.utils.hashing import stable_hash

TINY_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
    "init_seed",
)


DEFAULT_INITIALIZER_RANGE = 0.02  # std of the normal init; larger gives more varied (still random) text


def tiny_fields(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in TINY_FIELDS if model_cfg.get(k) is None]
    if missing:
        raise ValueError(f"tiny model config {model_cfg.get('name')!r} lacks fields {missing}")
    fields: dict[str, Any] = {k: int(model_cfg[k]) for k in TINY_FIELDS}
    fields["initializer_range"] = float(model_cfg.get("initializer_range") or DEFAULT_INITIALIZER_RANGE)
    return fields


def tiny_cache_key(model_cfg: Mapping[str, Any], tokenizer_dir: str | Path) -> str:
    """Hash of the architecture fields, the seed and the tokenizer folder's name (itself a content hash)."""
    payload = {"fields": tiny_fields(model_cfg), "tokenizer": Path(tokenizer_dir).name}
    return stable_hash(payload)


def build_tiny_llama(model_cfg: Mapping[str, Any], tokenizer_dir: str | Path, out_dir: str | Path) -> Path:
    """Build the tiny Llama and save model (safetensors) + tokenizer to out_dir. Same config, same files."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    fields = tiny_fields(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tokenizer.pad_token = tokenizer.eos_token = "<|im_end|>"
    if not tokenizer.chat_template:
        raise ValueError(f"tokenizer in {tokenizer_dir} has no chat template")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=fields["hidden_size"],
        num_hidden_layers=fields["num_hidden_layers"],
        num_attention_heads=fields["num_attention_heads"],
        num_key_value_heads=fields["num_key_value_heads"],
        intermediate_size=fields["intermediate_size"],
        max_position_embeddings=fields["max_position_embeddings"],
        initializer_range=fields["initializer_range"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
        torch.manual_seed(fields["init_seed"])
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
