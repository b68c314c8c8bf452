"""One stable hash for every cache key, and configs as plain data."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import Container, OmegaConf


def canonical_json(obj: Any) -> str:
    """obj as JSON with sorted keys; what JSON cannot hold (paths, tuples' members...) as str()."""
    return json.dumps(obj, sort_keys=True, default=str)


def stable_hash(obj: Any) -> str:
    """16 hex digits of the sha256 of obj's canonical JSON: the same data gives the same key in every process and
    on every machine (cache keys: synth data, eval units, gap samples, training fingerprints, tiny models)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def plain(node: Any) -> Any:
    """An OmegaConf container as plain dicts/lists, interpolations resolved; anything else unchanged."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, Container) else node


def without_targets(obj: Any) -> Any:
    """obj without its `_target_` keys (at any depth): which class builds a backend or verifier is construction,
    not data, so it stays out of cache keys (the keys from before `_target_` existed stay valid)."""
    if isinstance(obj, dict):
        return {k: without_targets(v) for k, v in obj.items() if k != "_target_"}
    if isinstance(obj, list):
        return [without_targets(v) for v in obj]
    return obj

