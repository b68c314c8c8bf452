"""Turn a `model/` config (DictConfig or dict) into a local folder, a tokenizer and a model."""
from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, Mapping

from crescent.models.embedded import build_once, convert_gguf, find_gguf
from crescent.models.tiny import build_tiny_llama, tiny_cache_key

log = logging.getLogger(__name__)

SOURCES = ("embedded", "tiny", "hub")
DTYPES = ("float32", "bfloat16", "float16", "auto", "bf16_if_fast")


class ModelNotAvailableError(OSError):
    """A hub model is neither in a local folder nor reachable on the hub."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("CRESCENT_CACHE") or Path.home() / ".cache" / "crescent")


def _cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def _source(model_cfg: Mapping[str, Any]) -> str:
    source = model_cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"model.source={source!r} (model {model_cfg.get('name')!r}); allowed: {list(SOURCES)}")
    return source


def _embedded_dir(model_cfg: Mapping[str, Any], cache_dir: Path) -> Path:
    for key in ("gguf_package", "gguf_file"):
        if not model_cfg.get(key):
            raise ValueError(f"model.{key} is required for model {model_cfg.get('name')!r}")
    return convert_gguf(find_gguf(model_cfg["gguf_package"], model_cfg["gguf_file"]), cache_dir)


def _tiny_dir(model_cfg: Mapping[str, Any], cache_dir: Path) -> Path:
    tokenizer_dir = _embedded_dir(model_cfg, cache_dir)  # the tokenizer comes from the embedded model
    out_dir = cache_dir / "models" / f"tiny-{tiny_cache_key(model_cfg, tokenizer_dir)}"
    return build_once(out_dir, partial(build_tiny_llama, model_cfg, tokenizer_dir), f"tiny model {out_dir.name}")


def resolve_model_dir(model_cfg: Mapping[str, Any], cache_dir: str | Path | None = None) -> str:
    """A local folder (embedded: converted; tiny: built; hub: local_path if it exists) or else the hub id."""
    source, cache_dir = _source(model_cfg), _cache(cache_dir)
    if source == "embedded":
        return str(_embedded_dir(model_cfg, cache_dir))
    if source == "tiny":
        return str(_tiny_dir(model_cfg, cache_dir))
    local_path = model_cfg.get("local_path")
    if local_path and Path(local_path).expanduser().is_dir():
        return str(Path(local_path).expanduser())
    if local_path:
        log.warning(
            "model %r: local_path %s does not exist; trying hub id %r",
            model_cfg.get("name"), local_path, model_cfg.get("hf_id"),
        )
    if not model_cfg.get("hf_id"):
        raise ModelNotAvailableError(_not_available_message(model_cfg, "no hf_id and no existing local_path"))
    return str(model_cfg["hf_id"])


def _not_available_message(model_cfg: Mapping[str, Any], reason: str) -> str:
    return (
        f"model {model_cfg.get('name')!r} (hf_id={model_cfg.get('hf_id')!r}, "
        f"local_path={model_cfg.get('local_path')!r}) could not be loaded: {reason}. "
        "Download it once (e.g. `huggingface-cli download <hf_id> --local-dir /path/to/folder`) and set "
        "`teacher.local_path=/path/to/folder` (and/or `student.local_path=...`), "
        "or run with network access / a populated HF hub cache."
    )


def _hub_kwargs(model_cfg: Mapping[str, Any], model_dir: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": bool(model_cfg.get("trust_remote_code") or False)}
    if kwargs["trust_remote_code"]:
        log.warning("model %r sets trust_remote_code=true: Python code shipped with %s will run on this machine",
                    model_cfg.get("name"), model_dir)
    if model_cfg.get("revision") and not Path(model_dir).is_dir():
        kwargs["revision"] = model_cfg["revision"]
    return kwargs


def _load(model_cfg: Mapping[str, Any], model_dir: str, loader, **kwargs):
    try:
        return loader(model_dir, **_hub_kwargs(model_cfg, model_dir), **kwargs)
    except OSError as err:  # hub id with no network / not cached / gated
        if _source(model_cfg) != "hub" or Path(model_dir).is_dir():
            raise
        raise ModelNotAvailableError(_not_available_message(model_cfg, f"{type(err).__name__}: {err}")) from err


def load_tokenizer(model_cfg: Mapping[str, Any], cache_dir: str | Path | None = None, model_dir: str | None = None):
    """Tokenizer for generation: left padding, a pad token, and the config's chat_template override."""
    from transformers import AutoTokenizer

    model_dir = model_dir or resolve_model_dir(model_cfg, cache_dir)
    tokenizer = _load(model_cfg, model_dir, AutoTokenizer.from_pretrained)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if model_cfg.get("chat_template"):
        tokenizer.chat_template = model_cfg["chat_template"]
    return tokenizer


def bf16_is_fast(device: str = "cpu") -> bool:
    """bf16 matmuls run natively here: a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and torch.backends.cpu.get_cpu_capability() in (
            "AVX512", "AMX")
    except (AttributeError, RuntimeError):
        return False


def torch_dtype(name: str | None, device: str = "cpu"):
    import torch

    if name is None or name == "auto":
        return "auto"
    if name == "bf16_if_fast":  # detected at run time; else the model's own dtype
        return torch.bfloat16 if bf16_is_fast(device) else "auto"
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r}; allowed: {list(DTYPES)} or null")
    return getattr(torch, name)


def load_model(
    model_cfg: Mapping[str, Any],
    cache_dir: str | Path | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    model_dir: str | None = None,
    attn_implementation: str | None = None,
):
    """Causal LM from safetensors, dtype from the argument or model.dtype, on `device`, in eval mode;
    attn_implementation (sdpa, eager, flash_attention_2) if given, else transformers' default."""
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(dtype or model_cfg.get("dtype"), device)
    model_dir = model_dir or resolve_model_dir(model_cfg, cache_dir)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = _load(model_cfg, model_dir, AutoModelForCausalLM.from_pretrained, dtype=dtype, use_safetensors=True,
                  **extra)
    return model.to(device).eval()


def load_model_and_tokenizer(
    model_cfg: Mapping[str, Any], cache_dir: str | Path | None = None, dtype: str | None = None, device: str = "cpu",
    attn_implementation: str | None = None,
):
    """(tokenizer, model), resolving the folder once; the model's pad token follows the tokenizer's."""
    model_dir = resolve_model_dir(model_cfg, cache_dir)
    tokenizer = load_tokenizer(model_cfg, cache_dir, model_dir=model_dir)
    model = load_model(model_cfg, cache_dir, dtype=dtype, device=device, model_dir=model_dir,
                       attn_implementation=attn_implementation)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model
