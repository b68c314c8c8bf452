#!/usr/bin/env bash
# The verifier comparison's code path on CPU: the embedded SmolLM2-135M-Instruct, 5 GSM8K questions x 4
# samples, every verifier on the same cached samples (the first job samples, the others only judge).
# About 10-15 minutes on 2 busy CPU cores. Expect J ~ 0 and a gap ~ 0: a 135M model cannot verify.
set -euo pipefail
cd "$(dirname "$0")/../.."
crescent -m stages=[gap] verify=mc,cot_binary,cot_score,tournament,all_of \
  gap.limit=5 gap.n_samples=4 gap.max_new_tokens=128 backend=fast logger=none \
  hydra.sweep.dir=multirun/gap_verifiers_smoke "$@"
python experiments/gap_verifiers/compare.py multirun/gap_verifiers_smoke
