import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from helpers import compose_cfg  # noqa: E402

MODELS_CACHE = "crescent-models"  # pytest's cache (.pytest_cache/d/<this>): converted models, kept between sessions


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory, request) -> Path:
    """The crescent cache of this test session, inside pytest's tmp dir: CRESCENT_CACHE points there for the whole
    session (subprocesses included), so neither a test nor a pipeline run with default paths touches
    ~/.cache/crescent. Only `models/` is shared between sessions, from pytest's own cache dir: its folders are named
    by the content they were built from (the GGUF's sha256, the tiny model's config), and converting the embedded
    model takes ~30-40 s. Everything else (kernels, synth data, eval units, the sha256 memo) starts empty."""
    cache = tmp_path_factory.mktemp("crescent_cache")
    provider = getattr(request.config, "cache", None)  # None under -p no:cacheprovider: convert per session
    if provider is not None:
        (cache / "models").symlink_to(provider.mkdir(MODELS_CACHE), target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CRESCENT_CACHE", str(cache))
        yield cache


@pytest.fixture
def make_cfg(tmp_path):
    return lambda *overrides: compose_cfg(overrides, tmp_path)
