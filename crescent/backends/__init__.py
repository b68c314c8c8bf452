"""Generation backends: `hf` (transformers, CPU/GPU), `fast` (continuous-batching CPU) and `vllm` (GPU scale).

conf/backend/<name>.yaml names the callable that builds its backend in `_target_` (built-ins: the classes'
`from_config`); `build_backend` calls it through hydra.utils.instantiate, so each is imported only when chosen and
a new backend is a YAML whose `_target_` names `fn(backend_cfg, model_cfg, cache_dir, seed) -> Backend`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from crescent.backends.base import Backend, Prompt, SamplingParams
from crescent.config.choices import BACKENDS


def build_backend(
    backend_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], cache_dir: str | Path | None = None, seed: int = 0
) -> Backend:
    """The backend of backend_cfg (its `_target_`), loaded with the model of model_cfg (seed: vLLM engine seed)."""
    from hydra.utils import instantiate

    from crescent.utils.hashing import plain

    settings, model = plain(backend_cfg), plain(model_cfg)
    target = settings.get("_target_")
    if not isinstance(target, str) or not target:
        raise ValueError(f"backend={settings.get('name')!r} has no _target_: name the callable that builds it, "
                         "fn(backend_cfg, model_cfg, cache_dir, seed) -> Backend (see conf/backend/hf.yaml)")
    build = instantiate({"_target_": target, "_partial_": True})  # the data stays out of OmegaConf
    backend = build({k: v for k, v in settings.items() if k != "_target_"}, model, cache_dir, seed=seed)
    if not callable(getattr(backend, "generate", None)):
        raise TypeError(f"backend._target_={target!r} returned a {type(backend).__name__}, which has no generate() "
                        "(crescent.backends.base.Backend)")
    return backend


__all__ = ["Backend", "Prompt", "SamplingParams", "build_backend"]
