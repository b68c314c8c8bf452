#!/usr/bin/env bash
# The ablation's code path on CPU: smoke budgets on the embedded model, dedup on/off x voting on/off.
set -euo pipefail
cd "$(dirname "$0")/../.."
crescent -m experiment=smoke dedup=embedding,none voting=majority,single \
  hydra.sweep.dir=multirun/crescent_ablation_smoke "$@"
python experiments/aggregate.py multirun/crescent_ablation_smoke
