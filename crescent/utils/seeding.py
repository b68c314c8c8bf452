"""Seeds derived from the master seed, so every unit of work is reproducible on its own."""
from __future__ import annotations

import hashlib

STREAM_BITS = 32  # stream offsets of one stage live in the low 32 bits of a request seed


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed for (seed, *parts); independent of execution order, so resumed runs match."""
    key = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF


def request_seeds(seed: int, stage: tuple, first: int, count: int, n: int) -> list[int]:
    """Per-request seeds for prompts first..first+count-1 of a stage, each drawing n samples.

    Sample j of prompt p gets the stream seed  derive_seed(seed, *stage) * 2**32 + p * n + j, and vLLM's V1
    engine seeds the n children of a request with `request seed + j` (vllm/v1/engine/parallel_sampling.py,
    ParentRequest._get_child_sampling_params), so request p is sent `... + p * n`: the ranges [p*n, p*n + n) of a
    stage never overlap, for any n, and no two samples of a stage share a stream. The seed depends only on the
    (master seed, stage) and the prompt's position in the whole stage, never on how the stage is split into calls,
    chunks or workers. p is the prompt's index in the stage (a bait call, a question, a verify prompt).
    """
    if n < 1 or first < 0 or count < 0:
        raise ValueError(f"request_seeds: need n >= 1, first >= 0, count >= 0 (got n={n}, first={first}, count={count})")
    if (first + count) * n > 1 << STREAM_BITS:
        raise ValueError(f"request_seeds: {first + count} prompts x n={n} samples exceed the 2**{STREAM_BITS} streams "
                         f"of stage {stage}")
    base = derive_seed(seed, "streams", *stage) << STREAM_BITS
    return [base + (first + i) * n for i in range(count)]
