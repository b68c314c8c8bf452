"""`crescent` console script: Hydra overrides in, stages run."""
from __future__ import annotations

import os
from pathlib import Path

# Nothing is downloaded at run time unless the user says so (export HF_HUB_OFFLINE=0).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402
import traceback  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from crescent.config import ConfigError  # noqa: E402


def conf_dir() -> Path:
    """The config tree: `conf/` at the top of a source checkout (editable install), else `crescent/conf/`, where
    the wheel carries it (setup.py copies it there). Absolute, so any cwd finds the same tree."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "conf"
    return checkout if (checkout / "config.yaml").is_file() and (package.parent / "setup.cfg").is_file() \
        else package / "conf"


CONF_DIR = str(conf_dir())


def main() -> float | None:
    """The console script: Hydra's main with the per-rank overrides of a multi-process launch added."""
    sys.argv[1:] = [*sys.argv[1:], *rank_overrides(sys.argv[1:])]
    return _hydra_main()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from crescent.pipeline import objective, run
    from crescent.utils import dist
    from crescent.utils.termination import Terminated, close_progress_bars, last_line

    status = Path(cfg.paths.output_dir) / "status.json" if dist.is_global_zero() else None
    try:
        return objective(cfg, run(cfg))  # the Optuna sweeper optimises this value
    except ConfigError as e:
        if _multirun():
            raise  # Hydra records the failed job and runs the rest of the sweep
        raise SystemExit(f"crescent: {e}") from None
    except Terminated as e:  # SIGTERM / SIGINT: status.json says failed / terminated; the conventional exit code
        close_progress_bars()
        print(last_line(e, status), file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    except Exception as e:
        if _multirun():
            raise
        # the traceback, then one last line naming the cause (a full disk: ENOSPC and the file)
        close_progress_bars()
        traceback.print_exception(e, file=sys.stderr)
        raise SystemExit(last_line(e, status)) from None


def rank_overrides(argv: list[str]) -> list[str]:
    """Hydra overrides for a rank > 0 that torchrun / srun started (Lightning's launcher adds the same ones to the
    processes it starts): no second .hydra/ config write into the shared run dir, and a log file of its own."""
    from crescent.utils import dist

    rank = dist.global_rank()
    if rank == 0:
        return []
    given = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a}
    extra = {"hydra.output_subdir": "null", "hydra.job.name": f"crescent_rank{rank}"}
    return [f"{k}={v}" for k, v in extra.items() if k not in given]


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


if __name__ == "__main__":
    main()
