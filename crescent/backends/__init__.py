"""Generation backends: `hf` (transformers, CPU/GPU), `fast` (continuous-batching CPU) and `vllm` (GPU scale).

Each is imported only when chosen."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from crescent.backends.base import Backend, Prompt, SamplingParams
from crescent.config.choices import BACKENDS


def build_backend(
    backend_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], cache_dir: str | Path | None = None, seed: int = 0
) -> Backend:
    """The backend named by backend_cfg.name, loaded with the model of model_cfg (seed: vLLM engine seed)."""
    name = backend_cfg.get("name")
    if name == "hf":
        from crescent.backends.hf import HFBackend

        return HFBackend.from_config(backend_cfg, model_cfg, cache_dir)
    if name == "fast":
        from crescent.backends.fast import FastBackend

        return FastBackend.from_config(backend_cfg, model_cfg, cache_dir)
    if name == "vllm":
        from crescent.backends.vllm import VLLMBackend

        return VLLMBackend.from_config(backend_cfg, model_cfg, cache_dir, seed=seed)
    raise ValueError(f"backend.name={name!r}; allowed: {list(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "Prompt", "SamplingParams", "build_backend"]
