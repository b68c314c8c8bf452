"""Shared test helpers: paths, prompts, config composition and a linear-time check (import as `from helpers import
...`; tests/ is on sys.path because it holds conftest.py). Fixtures stay in tests/conftest.py."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
# chat and plain prompts of very different lengths, shared by the backend tests
PROMPTS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    "Question: 1 + 1 =",
    [
        {"role": "system", "content": "You are a careful math teacher."},
        {"role": "user", "content": "Write a long word problem about trains, apples and a bakery."},
    ],
    "x",
    [{"role": "user", "content": "Solve 12 * 7."}],
]


def compose_cfg(overrides=(), tmp_path=None):
    """The composed config as the CLI would build it, with outputs under tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        extra = []
        if tmp_path is not None:
            extra = [f"paths.output_dir={tmp_path}/run", f"paths.synth_cache={tmp_path}/synth_cache",
                     f"paths.eval_cache={tmp_path}/eval_cache"]
        return compose(config_name="config", overrides=[*overrides, *extra, "print_config=false"])


def write_addition_sft(path: Path, n: int = 20) -> Path:
    """n chat rows of small additions (a worked answer ending in `#### sum`): the SFT data of the training tests."""
    import json

    rows = []
    for i in range(n):
        a, b = i + 2, 3 * i + 1
        rows.append({"id": f"r{i}", "messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"We add {a} and {b}: {a} + {b} = {a + b}.\n#### {a + b}"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def model_cfg(name: str, **overrides):
    """A model/ preset as a DictConfig, with field overrides (e.g. initializer_range for tiny_llama)."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.load(CONF / "model" / f"{name}.yaml"), overrides)


def growth_ratio(fn: Callable[[object], object], short, long, runs: int = 3) -> float:
    """Best-of-`runs` time of fn(long) over that of fn(short): a relative measure, never a wall-clock threshold.
    Below 20 us the short time is timer noise, so it counts as 20 us."""
    def best(arg) -> float:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn(arg)
            times.append(time.perf_counter() - start)
        return min(times)

    fn(short)  # warm caches
    return best(long) / max(best(short), 2e-5)


def assert_linear(fn: Callable[[object], object], short, long, size_ratio: float = 10.0, slack: float = 2.0) -> None:
    """fn on `long` (size_ratio x `short`) takes at most slack x size_ratio as long: linear, not quadratic (which
    would be ~size_ratio^2). Measured twice before failing, since a busy machine can slow one measurement."""
    limit = slack * size_ratio
    ratio = growth_ratio(fn, short, long)
    if ratio > limit:
        ratio = min(ratio, growth_ratio(fn, short, long))
    assert ratio <= limit, f"{ratio:.1f}x slower on {size_ratio:g}x the input (linear allows {limit:g}x)"
