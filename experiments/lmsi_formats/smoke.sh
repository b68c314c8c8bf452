#!/usr/bin/env bash
# The format ablation's code path on CPU: embedded SmolLM2-135M, 6 unlabeled questions, 4 paths each.
set -euo pipefail
cd "$(dirname "$0")/../.."
crescent -m experiment=lmsi_smoke \
  'questions.formats=[cot_fewshot,direct_fewshot,cot_zeroshot,direct_zeroshot],[cot_fewshot,cot_zeroshot],[direct_fewshot,direct_zeroshot]' \
  hydra.sweep.dir=multirun/lmsi_formats_smoke "$@"
python experiments/aggregate.py multirun/lmsi_formats_smoke
