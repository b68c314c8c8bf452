#!/usr/bin/env bash
# LMSI format ablation on SLURM: all four formats vs few-shot-CoT-only vs answer-only, one 8-GPU job each.
# Rows (LMSI, Huang et al. 2022, format ablation as in methods.md §2): all four formats (73.5), few-shot CoT alone
# ("few-shot-CoT only", 69.4), answer only (61.6). assumption: "answer only" = both direct formats (few-shot and
# zero-shot); the notes do not say which direct formats the paper's row used.
set -euo pipefail
cd "$(dirname "$0")/../.."
crescent -m experiment=lmsi_gsm8k \
  'questions.formats=[cot_fewshot,direct_fewshot,cot_zeroshot,direct_zeroshot],[cot_fewshot],[direct_fewshot,direct_zeroshot]' \
  hydra/launcher=slurm_8gpu hydra.sweep.dir=multirun/lmsi_formats "$@"
python experiments/aggregate.py multirun/lmsi_formats
