#!/usr/bin/env bash
# The format ablation's code path on CPU: embedded SmolLM2-135M, 6 unlabeled questions, 4 paths each.
# Rows (LMSI, Huang et al. 2022, format ablation as in methods.md §2): all four formats (73.5), few-shot CoT alone
# ("few-shot-CoT only", 69.4), answer only (61.6). assumption: "answer only" = both direct formats (few-shot and
# zero-shot); the notes do not say which direct formats the paper's row used.
set -euo pipefail
cd "$(dirname "$0")/../.."
crescent -m experiment=lmsi_smoke \
  'questions.formats=[cot_fewshot,direct_fewshot,cot_zeroshot,direct_zeroshot],[cot_fewshot],[direct_fewshot,direct_zeroshot]' \
  hydra.sweep.dir=multirun/lmsi_formats_smoke "$@"
python experiments/aggregate.py multirun/lmsi_formats_smoke
