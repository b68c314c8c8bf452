#!/usr/bin/env bash
# Crescent ablation on SLURM: full vs no-dedup vs no-voting, 3 seeds each, one 8-GPU job per run.
set -euo pipefail
cd "$(dirname "$0")/../.."
crescent -m experiment=crescent_llama3_8b,crescent_llama3_8b_no_dedup,crescent_llama3_8b_no_voting seed=0,1,2 \
  hydra/launcher=slurm_8gpu hydra.sweep.dir=multirun/crescent_ablation "$@"
python experiments/aggregate.py multirun/crescent_ablation
