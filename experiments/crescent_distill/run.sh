#!/usr/bin/env bash
# Distillation: Crescent data vs seed augmentation into the same 1B student, 3 seeds each, on SLURM.
set -euo pipefail
cd "$(dirname "$0")/../.."
crescent -m experiment=crescent_distill_llama3_8b_to_1b,seed_augment_distill_llama3_8b_to_1b seed=0,1,2 \
  hydra/launcher=slurm_8gpu hydra.sweep.dir=multirun/crescent_distill "$@"
python experiments/aggregate.py multirun/crescent_distill
