#!/usr/bin/env bash
# Crescent main table on a SLURM cluster: 2 models x 3 seeds, one 8-GPU job each.
set -euo pipefail
cd "$(dirname "$0")/../.."
crescent -m experiment=crescent_llama3_8b,crescent_llama2_7b seed=0,1,2 \
  hydra/launcher=slurm_8gpu hydra.sweep.dir=multirun/crescent_table_main "$@"
python experiments/aggregate.py multirun/crescent_table_main
