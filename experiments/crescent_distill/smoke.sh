#!/usr/bin/env bash
# The distillation comparison's code path on CPU: SmolLM2-135M teacher, the tiny random Llama as student,
# Crescent bait questions vs seed-augmented GSM8K questions.
set -euo pipefail
cd "$(dirname "$0")/../.."
crescent -m experiment=smoke model@student=tiny_llama train=distil questions=bait,seed_augment \
  questions.max_calls=24 hydra.sweep.dir=multirun/crescent_distill_smoke "$@"
python experiments/aggregate.py multirun/crescent_distill_smoke
