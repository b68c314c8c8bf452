#!/usr/bin/env bash
# LMSI format ablation on SLURM: all four formats vs CoT-only vs answer-only, one 8-GPU job each.
set -euo pipefail
cd "$(dirname "$0")/../.."
crescent -m experiment=lmsi_gsm8k \
  'questions.formats=[cot_fewshot,direct_fewshot,cot_zeroshot,direct_zeroshot],[cot_fewshot,cot_zeroshot],[direct_fewshot,direct_zeroshot]' \
  hydra/launcher=slurm_8gpu hydra.sweep.dir=multirun/lmsi_formats "$@"
python experiments/aggregate.py multirun/lmsi_formats
