"""What identifies a model's weights for caching results computed from them (the shared base-model eval cache)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

# files of a model folder that change what it computes: weights, architecture, tokenizer and chat template
FINGERPRINT_GLOBS = ("*.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "chat_template.jinja")


def weights_fingerprint(model_cfg: Mapping[str, Any], cache_dir: str | Path) -> dict:
    """{"files": {name: sha256}} of the model's local folder (embedded, tiny, local_path; hashes memoised by path,
    size and mtime), or {"hub": hf_id, "revision": ...} for a hub id with no local folder."""
    from crescent.models.embedded import file_sha256
    from crescent.models.loading import resolve_model_dir

    resolved = Path(resolve_model_dir(model_cfg, cache_dir))
    if not resolved.is_dir():
        return {"hub": str(resolved), "revision": model_cfg.get("revision")}
    files = sorted({f for pattern in FINGERPRINT_GLOBS for f in resolved.glob(pattern) if f.is_file()})
    return {"files": {f.name: file_sha256(f, cache_dir) for f in files}}
