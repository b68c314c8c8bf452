"""Seeds derived from the master seed, so every unit of work is reproducible on its own."""
from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed for (seed, *parts); independent of execution order, so resumed runs match."""
    key = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF
