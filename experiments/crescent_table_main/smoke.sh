#!/usr/bin/env bash
# The same pipeline on CPU in minutes: embedded SmolLM2-135M, smoke budgets, 2 seeds.
set -euo pipefail
cd "$(dirname "$0")/../.."
crescent -m experiment=smoke seed=0,1 hydra.sweep.dir=multirun/crescent_table_main_smoke "$@"
python experiments/aggregate.py multirun/crescent_table_main_smoke
