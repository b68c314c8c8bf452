"""`crescent` console script: Hydra overrides in, stages run."""
from __future__ import annotations

import os
from pathlib import Path

# Nothing is downloaded at run time unless the user says so (export HF_HUB_OFFLINE=0).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from crescent.config import ConfigError  # noqa: E402


# Absolute, so `crescent`, `python -m crescent` and any cwd find the same config tree.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    from crescent.pipeline import run

    try:
        run(cfg)
    except ConfigError as e:
        raise SystemExit(f"crescent: {e}") from None


if __name__ == "__main__":
    main()
