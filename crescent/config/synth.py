"""The part of the config that determines the synthetic data, and its hash (the synth cache key)."""
from __future__ import annotations

from collections.abc import Mapping

from crescent.config.checks import get_key
from crescent.config.fields import MISSING
from crescent.utils.hashing import stable_hash, without_targets

# Bump when the generate-stage code changes its output for the same config (cleaning rules, prompts
# rendering, extraction), so cached data made by older code is not reused.
SYNTH_CODE_VERSION = 2
# Everything that changes the generated data; paths, logging and later stages are left out.
SYNTH_KEYS = ("teacher", "backend", "questions", "sampling", "dedup", "voting", "verify", "seed")
# Keys inside those that only change speed or placement, never the data.
_NON_DATA = {"backend": ("device", "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager",
                         "data_parallel_size", "shard")}


def synth_config(cfg: Mapping) -> dict:
    """The part of the config that determines the synthetic data."""
    out = {}
    for key in SYNTH_KEYS:
        value = get_key(cfg, key)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _NON_DATA.get(key, ())}
        if key == "verify" and (value is MISSING or value is None or value.get("name") == "none"):
            continue  # no verification: same data (and cache key) as before the verify group existed
        out[key] = None if value is MISSING else without_targets(value)  # _target_: construction, not data
    out["synth_code_version"] = SYNTH_CODE_VERSION
    return out


def config_hash(cfg: Mapping) -> str:
    """The synth cache key: stable_hash of synth_config (the same values as before the config package)."""
    return stable_hash(synth_config(cfg))
