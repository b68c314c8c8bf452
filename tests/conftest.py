import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
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


def model_cfg(name: str, **overrides):
    """A model/ preset as a DictConfig, with field overrides (e.g. initializer_range for tiny_llama)."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.load(CONF / "model" / f"{name}.yaml"), overrides)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ.get("CRESCENT_CACHE") or Path.home() / ".cache" / "crescent")


@pytest.fixture
def make_cfg(tmp_path):
    return lambda *overrides: compose_cfg(overrides, tmp_path)
