"""Shared by the benchmark scripts (run as `python experiments/perf/<script>.py`): offline HF, the repo on
sys.path, the results folder, and the machine facts recorded with every result."""
from __future__ import annotations

import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "experiments" / "perf" / "results"


def machine_info(load_start) -> dict:
    """CPU model and torch's SIMD level, cores, threads, versions, load average at start and now, peak RSS."""
    import torch

    from crescent.backends.native import cpuinfo_line

    return {"cpu_model": cpuinfo_line("model name").split(":", 1)[-1].strip(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "loadavg_at_start": load_start,
            "loadavg_at_end": os.getloadavg(),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def best_of(fn, repeats: int = 5) -> float:
    """Fewest seconds of `repeats` calls of fn, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def stream_bandwidth() -> float:
    """Bytes per second of a bf16 sum over 512 MiB (memory read bandwidth), best of 3."""
    import torch

    big = torch.empty(2**28, dtype=torch.bfloat16).fill_(1)
    return big.numel() * 2 / best_of(lambda: big.sum(), 3)
